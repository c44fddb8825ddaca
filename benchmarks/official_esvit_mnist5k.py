"""Reference run: the OFFICIAL microsoft/esvit training code (EsViT, view + region) on mnist5k, on CPU.

What it is
    The EsViT counterpart of benchmarks/official_dino_mnist5k.py: it settles whether the ordering
    EsViT (V+R) >= DINO (V) fails on mnist5k in vit_jax only or in the reference too. Every
    modelling/training piece is imported from an unmodified checkout of
    https://github.com/microsoft/esvit given by --esvit_repo (put on sys.path); none of its code is
    copied here:
      models/vision_transformer.py  VisionTransformer(use_dense_prediction=True): the multi-crop
                                    forward returning (view logits, region logits, region
                                    features, patches per crop size), its position-embedding
                                    resize, DINOHead (as `head` and `head_dense`)
      main_esvit.py                 DDINOLoss (0.5 view + 0.5 region matching) or, with
                                    --no_region, its DINOLoss; train_one_epoch, called as is
      datasets/build.py             DataAugmentationDINO (EsViT's copy: one local pipeline per size)
      utils.py                      get_params_groups, cosine_scheduler, clip_gradients,
                                    cancel_gradients_last_layer, fix_random_seeds, MetricLogger,
                                    GaussianBlur / Solarization
      eval_knn.py                   knn_classifier (weighted k-NN, T=0.07) on the L2-normalised
                                    class token of the teacher

What it changes: exactly what official_dino_mnist5k.py changes (its docstring): crop sizes, no
flip, MNIST normalisation, the small ViT (4x4 patches, width 128, depth 6, 4 heads, MLP 256, heads
of hidden 512 / bottleneck 128 / --out_dim prototypes), an absolute --lr, our mnist5k split in a
shuffled DataLoader that drops the last partial batch. The remedy flags apply
benchmarks/official_dino_remedies.py to the official objects: Sinkhorn-Knopp on the view AND the
region targets (each over all its rows, as vit_jax does), KoLeo on the student's class tokens of the
two global crops (a hook on the ViT's final LayerNorm), our init.

How the official code runs here
    * The shims of official_dino_mnist5k.py: torch.distributed in main_esvit is world size 1
      (DDINOLoss.update_center), Tensor.cuda the identity and torch.cuda.synchronize a no-op while
      train_one_epoch and knn_classifier run, the student in a `.module` wrapper as under DDP.
    * torch 2 has no `torch._six` (models/cvt_v4_transformer.py imports container_abcs from it at
      import time): a stand-in module with collections.abc's names. main_esvit imports timm.data:
      it needs timm 0.4.12's Python files (`_pil_interp`), yacs and einops, installed without
      dependencies (below); no timm code runs.
    * train_one_epoch is given a DISABLED torch GradScaler: its fp32 branch calls
      `utils.clip_gradients(model, ...)` with `model` undefined (a NameError whenever clip_grad is
      set), while its fp16 branch clips the student; a disabled scaler makes that branch exactly
      the fp32 update (scale, unscale_ and update do nothing, step is optimizer.step()), and
      torch.cuda.amp.autocast(True) turns itself off on a machine without CUDA.

Command line (the shipped recipe, configs/mnist5k/esvit.py:vr,vit):
    mkdir -p /tmp/esvit_official && \\
      git -C /work/.mirror/microsoft+esvit/repo archive HEAD -- '*.py' | tar -x -C /tmp/esvit_official
    pip install --no-deps --target /work/esvit_deps timm==0.4.12 yacs einops
    PYTHONPATH=/work/tv:/work/esvit_deps python benchmarks/official_esvit_mnist5k.py \\
        --esvit_repo /tmp/esvit_official --global_scale 0.8 1 --local_crops_number 4 \\
        --local_size 16 --local_scale 0.2 0.5 --no_solarize --init xavier --posemb_init_std 2 \\
        --sinkhorn_iters 3 --koleo_weight 0.1 --momentum_teacher 0.95 --threads 1 \\
        --out workdirs/official/esvit_vr_mom095.jsonl
    (add --no_region for the view loss alone: main_esvit's DINOLoss)
Smoke test: the same with --epochs 1 --local_crops_number 2 --eval_every 1 --max_steps_per_epoch 3

Output: as official_dino_mnist5k.py, a JSON line per epoch and `final: {...}` last.
"""
from __future__ import annotations

import argparse
import collections.abc
import functools
import os
import sys
import types
import warnings

import torch
from torch import nn

import official_dino_remedies as remedies
from official_dino_data import edit_for_mnist
from official_dino_mnist5k import (_import_torchvision_python_only, _NoDDP, _SingleProcessDist,
                                   knn_eval, make_loaders, make_schedules, recipe_parser,
                                   seed_everything, train_and_log)


def parse_args(argv=None):
    p = recipe_parser(__doc__.split("\n")[0], "--esvit_repo",
                      "checkout of microsoft/esvit (main_esvit.py, utils.py, models/, ...)")
    p.add_argument("--no_region", action="store_true",
                   help="view loss only (main_esvit.DINOLoss, use_dense_prediction=False)")
    return p.parse_args(argv)


def import_official(repo: str):
    for f in ("main_esvit.py", "utils.py", "models/vision_transformer.py", "datasets/build.py",
              "eval_knn.py"):
        if not os.path.isfile(os.path.join(repo, f)):
            raise FileNotFoundError(f"{repo} has no {f}: --esvit_repo must be an EsViT checkout")
    _import_torchvision_python_only()
    if "torch._six" not in sys.modules:   # removed in torch 2; imported by cvt_v4_transformer.py
        six = types.ModuleType("torch._six")
        six.container_abcs, six.string_classes, six.int_classes = collections.abc, (str, bytes), int
        six.inf = float("inf")
        sys.modules["torch._six"] = six
    sys.path.insert(0, os.path.abspath(repo))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import datasets.build
        import eval_knn
        import main_esvit
        import models.vision_transformer as vits
        import utils
    return types.SimpleNamespace(main_esvit=main_esvit, utils=utils, vits=vits, eval_knn=eval_knn,
                                 augmentation=datasets.build.DataAugmentationDINO)


def build_vit(official, drop_path_rate, out_dim, region: bool, init: str, posemb_init_std: float):
    """EsViT's ViT at our size with `head` (and with region, `head_dense`) as main_esvit sets them;
    the init remedies touch the backbone only (they run before the heads are attached)."""
    vit = official.vits.VisionTransformer(
        patch_size=4, img_size=[28], in_chans=1, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2,
        qkv_bias=True, drop_path_rate=drop_path_rate, use_dense_prediction=region,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))   # as vits.deit_tiny/small
    if init == "xavier":
        remedies.xavier_init(vit)
    if init == "xavier" or posemb_init_std != 0.02:
        remedies.init_pos_embed(vit, posemb_init_std, xavier=init == "xavier")

    def head():
        return official.vits.DINOHead(128, out_dim, use_bn=False, norm_last_layer=True, nlayers=3,
                                      hidden_dim=512, bottleneck_dim=128)
    vit.head = head()
    if region:
        vit.head_dense = head()
    return vit


class _ClassToken(nn.Module):
    """The backbone feature of eval_knn.py: the normed class token (forward_features[0] when the
    ViT also returns its patch tokens)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        out = self.vit.forward_features(x)
        return out[0] if isinstance(out, tuple) else out


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    official = import_official(args.esvit_repo)
    main_esvit, utils = official.main_esvit, official.utils
    region = not args.no_region
    main_esvit.dist = _SingleProcessDist(main_esvit.dist)
    seed_everything(utils, args.seed)

    # EsViT's DataAugmentationDINO takes local crop counts and sizes as lists (one pipeline per size)
    aug = official.augmentation(tuple(args.global_scale), tuple(args.local_scale),
                                [args.local_crops_number], [96])
    edit_for_mnist(aug, utils.Solarization, args.local_size, solarize=not args.no_solarize)
    print("augmentation (official EsViT DataAugmentationDINO, sizes/flip/normalisation edited):")
    data_loader, memory_loader, query_loader = make_loaders(args, aug)

    # ---- networks, as main_esvit.train_esvit's ViT branch (no batchnorm: teacher_without_ddp = teacher)
    student = build_vit(official, 0.1, args.out_dim, region, args.init, args.posemb_init_std)
    teacher = build_vit(official, 0.0, args.out_dim, region, args.init, args.posemb_init_std)
    assert not utils.has_batchnorms(student)
    teacher_without_ddp = teacher
    student = _NoDDP(student)
    teacher_without_ddp.load_state_dict(student.module.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    print(f"Student and teacher built ({'view + region' if region else 'view only'}): "
          f"{sum(p.numel() for p in student.module.parameters()) / 1e6:.3f}M params with heads.")

    loss_cls = main_esvit.DDINOLoss if region else main_esvit.DINOLoss
    dino_loss = remedies.make_loss(
        loss_cls, args.out_dim, args.local_crops_number + 2, args.warmup_teacher_temp,
        args.teacher_temp, args.warmup_teacher_temp_epochs, args.epochs,
        sinkhorn_iters=args.sinkhorn_iters, koleo_weight=args.koleo_weight,
        student_wrapper=student.module, feature_module=student.module.norm,
        pick_feature=lambda out: out[:, 0])
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    lr_schedule, wd_schedule, momentum_schedule = make_schedules(utils, args, len(data_loader))
    # the fp16 branch of train_one_epoch with a disabled scaler = the fp32 update (module docstring)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaler = torch.amp.GradScaler("cuda", enabled=False)
    train_args = argparse.Namespace(epochs=args.epochs, clip_grad=args.clip_grad,
                                    freeze_last_layer=args.freeze_last_layer,
                                    batch_size_per_gpu=args.batch, num_mixup_views=0)
    return train_and_log(
        args,
        lambda epoch: main_esvit.train_one_epoch(student, teacher, teacher_without_ddp, dino_loss,
                                                 data_loader, optimizer, lr_schedule, wd_schedule,
                                                 momentum_schedule, epoch, None, scaler, train_args),
        lambda: knn_eval(official, _ClassToken(teacher_without_ddp), memory_loader, query_loader))


if __name__ == "__main__":
    main()
