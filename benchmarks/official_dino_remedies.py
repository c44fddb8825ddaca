"""The shipped DINO recipe's remedies, applied to the OFFICIAL facebookresearch/dino objects.

benchmarks/official_dino_mnist5k.py runs the official training code; with its remedy flags it calls
these functions, so that the official code trains configs/mnist5k/esvit.py:v,vit's recipe (the
remedies are not in DINO; DINOv2's Sinkhorn-Knopp and KoLeo, and our ViT's init). Written here from
the papers' equations, as vit_jax's own versions are (vit_jax/objectives/dino_losses.py); nothing
is copied from DINO or DINOv2, and the official modules are used unmodified:
  * xavier_init: vit_jax's weight_init="mae" on the official VisionTransformer: xavier-uniform
    Linear weights (q, k, v as three D x D blocks of the fused qkv, as our separate q / k / v
    Dense layers), zero biases, the patch conv xavier on its flattened (D, p*p*C) weight with a
    zero bias, the class token N(0, 0.02).
  * init_pos_embed: the position embedding drawn at `std` (normal for xavier, torch's
    trunc_normal_ for DINO's init, as vit_jax's ViT.posemb_init_std).
  * SinkhornDINOLoss: the official DINOLoss with Sinkhorn-Knopp targets. It hands the official
    forward teacher logits whose centred, sharpened softmax IS the Sinkhorn-Knopp target
    (tau * log q + center), so the official cross-entropy, crop pairing and averaging run as is.
  * KoLeo on the student backbone's class tokens of the two global crops (summed over the crops),
    caught by a forward hook on the official MultiCropWrapper's backbone (DINO) or on the final
    LayerNorm of EsViT's ViT (benchmarks/official_esvit_mnist5k.py).
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def xavier_init(vit: nn.Module) -> None:
    for name, m in vit.named_modules():
        if isinstance(m, nn.Linear):
            w = m.weight
            blocks = w.chunk(3, dim=0) if name.endswith("qkv") else (w,)
            for blk in blocks:   # chunk returns views: the init writes into w
                nn.init.xavier_uniform_(blk)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    conv = vit.patch_embed.proj
    nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    nn.init.normal_(vit.cls_token, std=0.02)


@torch.no_grad()
def init_pos_embed(vit: nn.Module, std: float, xavier: bool) -> None:
    if xavier:
        nn.init.normal_(vit.pos_embed, std=std)
    else:
        nn.init.trunc_normal_(vit.pos_embed, std=std)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, iters: int) -> torch.Tensor:
    """(N, K) scores (logits / tau) -> (N, K) targets: each row sums to 1, each column holds 1/K of
    the total mass (alternating normalisations of exp(scores))."""
    q = torch.exp((scores - scores.max()).double())   # in float64: exp(-100) is denormal in float32
    n, k = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=0, keepdim=True) / k
        q = q / q.sum(dim=1, keepdim=True) / n
    return (q * n).float()


def koleo(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean log(distance to the nearest other row) of the L2-normalised rows of (B, D)."""
    x = nn.functional.normalize(features, dim=-1)
    d2 = (x.pow(2).sum(-1, keepdim=True) + x.pow(2).sum(-1)[None, :] - 2.0 * x @ x.T)
    d2 = d2 + torch.diag(torch.full((x.shape[0],), float("inf")))
    return -torch.log(d2.min(dim=1).values.clamp_min(0.0).sqrt() + eps).mean()


def make_loss(official_loss_cls, *args, sinkhorn_iters: int, koleo_weight: float,
              student_wrapper: nn.Module | None, feature_module: nn.Module | None = None,
              pick_feature=None):
    """An instance of a subclass of the official loss (main_dino.DINOLoss, or main_esvit's DINOLoss
    or DDINOLoss, whose outputs are (view, region, features, npatch) tuples and whose forward also
    takes targets_mixup) with the remedies switched on. KoLeo reads the student's features of the
    global crops from the output of `feature_module` (default: the wrapper's backbone), called
    once per crop size with the global crops first, through `pick_feature` (default: as is)."""

    class RemedyDINOLoss(official_loss_cls):
        def __init__(self):
            super().__init__(*args)
            self.global_feats: list[torch.Tensor] = []
            if koleo_weight > 0:
                module = student_wrapper.backbone if feature_module is None else feature_module
                pick = pick_feature or (lambda out: out)
                student_wrapper.register_forward_pre_hook(lambda *_: self.global_feats.clear())
                module.register_forward_hook(lambda _m, _i, out: self.global_feats.append(pick(out)))

        def _sinkhorn(self, logits, center, tau):
            q = sinkhorn_knopp(logits.detach() / tau, sinkhorn_iters)
            return tau * torch.log(q.clamp_min(1e-38)) + center

        def forward(self, student_output, teacher_output, epoch, *rest):
            if sinkhorn_iters > 0:
                tau = float(self.teacher_temp_schedule[epoch])
                if isinstance(teacher_output, tuple):   # DDINOLoss: view and region targets
                    view, region, feats, npatch = teacher_output
                    teacher_output = (self._sinkhorn(view, self.center, tau),
                                      self._sinkhorn(region, self.center_grid, tau), feats, npatch)
                else:
                    teacher_output = self._sinkhorn(teacher_output, self.center, tau)
            loss = super().forward(student_output, teacher_output, epoch, *rest)
            if koleo_weight > 0:
                g = self.global_feats[0]
                loss = loss + koleo_weight * sum(koleo(c) for c in g.chunk(2))
            return loss

    return RemedyDINOLoss()
