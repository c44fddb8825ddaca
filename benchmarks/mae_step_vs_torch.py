"""Our MAE pre-training step against a PyTorch MAE's on the same CPU, alternating in one process.

    python benchmarks/mae_step_vs_torch.py --model vit_small_patch16_224 --batch 32 --steps 3 --repeats 3

Ours: the jitted step train.py runs with `objective="mae"` (vit_jax.aot.build_step: MAE's ViT-B
defaults, 75% of the patches masked, decoder 512 wide, 8 blocks, 16 heads; AdamW with global-norm
clipping at 1.0, donated state). PyTorch: `TorchMAE` below, an MAE written for this benchmark from
the facts of facebookresearch/mae's models_mae.py (timm-style pre-norm blocks with qkv bias, layer
norm eps 1e-6, exact GELU; per-example random masking by argsort of uniform noise and a gather of
the kept tokens; the class token added after masking; the decoder's mask tokens appended and
un-shuffled by a gather; fixed position embeddings; MSE on the masked patches), with
F.scaled_dot_product_attention, clip_grad_norm_ and torch.optim.AdamW, float32, eager.
`--hf` adds transformers' ViTMAEForPreTraining (sdpa) of the same size as a third run.
Both models have the same trainable parameters; the script checks the counts before timing.
The last lines are `ratio_ours_over_torch: X` (images/s, > 1: ours faster) [and `..._hf`].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from train_step_vs_torch import SIZES, compare, harness_args, ours_run, parse, report
from vit_jax.models.vit import VIT_SIZES

DECODER = dict(width=512, depth=8, heads=16)   # vit_jax's mae defaults (MAE's ViT-B/L/H decoder)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x); x + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, int(dim * mlp_ratio)), nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TorchMAE(nn.Module):
    """MAE: a ViT encoder on the visible patches, a light decoder over all of them; (B, 3, S, S) in."""

    def __init__(self, size: int, patch: int, width: int, depth: int, heads: int, mask_ratio: float = 0.75):
        super().__init__()
        self.patch, self.mask_ratio = patch, mask_ratio
        n = (size // patch) ** 2
        dd = DECODER["width"]
        self.patch_embed = nn.Conv2d(3, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos", torch.randn(1, n + 1, width) * 0.02)      # fixed, as MAE's sincos
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.decoder_embed = nn.Linear(width, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("dec_pos", torch.randn(1, n + 1, dd) * 0.02)
        self.decoder_blocks = nn.ModuleList(Block(dd, DECODER["heads"]) for _ in range(DECODER["depth"]))
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, patch * patch * 3)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        b, c, s, _ = imgs.shape
        h, p = s // self.patch, self.patch
        return imgs.reshape(b, c, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * h, p * p * c)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos[:, 1:]
        b, n, d = x.shape
        keep = int(n * (1 - self.mask_ratio))
        shuffle = torch.argsort(torch.rand(b, n), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        x = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, n)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        x = torch.cat([(self.cls_token + self.pos[:, :1]).expand(b, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep, -1)], dim=1)
        tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.dec_pos
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        per_patch = ((pred - self.patchify(imgs)) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()


def torch_step(model: nn.Module, batch: int, size: int, loss_of=None):
    """-> step(): one AdamW step of `model` (MAE's betas and weight decay) on a fixed random batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    loss_of = loss_of or model

    def run():
        opt.zero_grad(set_to_none=True)
        loss_of(x).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return run


def hf_mae(size_name: str, patch: int, size: int) -> nn.Module:
    width, depth, heads, mlp = VIT_SIZES[size_name]
    cfg = transformers.ViTMAEConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                    intermediate_size=mlp or 4 * width, image_size=size, patch_size=patch,
                                    decoder_hidden_size=DECODER["width"],
                                    decoder_num_hidden_layers=DECODER["depth"],
                                    decoder_num_attention_heads=DECODER["heads"],
                                    decoder_intermediate_size=4 * DECODER["width"], mask_ratio=0.75,
                                    norm_pix_loss=False, layer_norm_eps=1e-6, attn_implementation="sdpa")
    return transformers.ViTMAEForPreTraining(cfg).train()


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(argv=None) -> None:
    p = harness_args(__doc__)
    p.add_argument("--hf", action="store_true", help="also time transformers' ViTMAEForPreTraining")
    a = parse(p, argv)
    size_name, patch, size = SIZES[a.model]
    width, depth, heads, _ = VIT_SIZES[size_name]
    runs = {"ours": ours_run(a, a.model, a.batch, size, 1000, objective="mae")}
    ours_params = runs["ours"].num_params
    model = TorchMAE(size, patch, width, depth, heads).train()
    if trainable(model) != ours_params:
        raise SystemExit(f"the PyTorch MAE has {trainable(model):,} trainable parameters, ours "
                         f"{ours_params:,}: not the same model")
    runs["torch"] = torch_step(model, a.batch, size)
    if a.hf:
        hf = hf_mae(size_name, patch, size)
        runs["hf"] = torch_step(hf, a.batch, size, loss_of=lambda x: hf(pixel_values=x).loss)
    report(compare(runs, a.warmup, a.steps, a.repeats), a.batch, model=a.model, objective="mae",
           params=ours_params)


if __name__ == "__main__":
    main()
