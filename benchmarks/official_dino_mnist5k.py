"""Reference run: the OFFICIAL facebookresearch/dino training code on our mnist5k split, on CPU.

What it is
    A baseline to compare vit_jax's DINO against. Every modelling/training piece is imported from an
    unmodified checkout of https://github.com/facebookresearch/dino given by --dino_repo (put on
    sys.path); none of DINO's code is copied here:
      vision_transformer.py  VisionTransformer (backbone), DINOHead
      utils.py               MultiCropWrapper, cosine_scheduler, get_params_groups, clip_gradients,
                             cancel_gradients_last_layer (both called inside train_one_epoch),
                             fix_random_seeds, setup_for_distributed, MetricLogger (inside
                             train_one_epoch), GaussianBlur / Solarization (inside the augmentation)
      main_dino.py           DINOLoss, DataAugmentationDINO, train_one_epoch (called as is, once per
                             epoch, exactly as main_dino.train_dino does)
      eval_knn.py            knn_classifier (weighted k-NN, T=0.07) on L2-normalised teacher
                             backbone features (VisionTransformer.forward = the class token)

What it changes (only what a 28x28x1 dataset forces; nothing in the training logic)
    * DataAugmentationDINO is instantiated from main_dino and then edited in place: crop sizes
      224 -> 28 (global) and 96 -> 12 (local), RandomHorizontalFlip removed (digits are not
      flip-invariant), Normalize set to MNIST mean 0.1307 / std 0.3081 on 1 channel. All other ops
      and probabilities are the official ones (ColorJitter's saturation/hue and RandomGrayscale are
      no-ops on 1-channel 'L' images, but they stay in the pipeline as in the original).
    * Model size: ViT patch 4, img 28, in_chans 1, dim 128, depth 6, heads 4, mlp_ratio 2, qkv_bias,
      drop_path 0.1 (student) / 0 (teacher), LayerNorm eps 1e-6 as in the official vit_* factories;
      DINOHead(128, out_dim, use_bn=False,
      norm_last_layer=True, nlayers=3, hidden_dim=512, bottleneck_dim=128) for both.
    * --lr is the ABSOLUTE peak lr (main_dino multiplies its --lr by batch/256; we do not).
    * Data: vit_jax.data.mnist5k (4,000 train / 1,000 test) instead of an ImageFolder; a plain
      shuffled DataLoader (drop_last=True) instead of a DistributedSampler.

How the official code runs without torch.distributed / CUDA (process-local shims, see `_cpu_shims`)
    * main_dino.DINOLoss.update_center calls dist.all_reduce / dist.get_world_size directly: the name
      `dist` inside main_dino (only there) is replaced by a proxy whose all_reduce is the identity
      and get_world_size is 1 (i.e. world size 1); everything else forwards to torch.distributed.
      torch.distributed is never initialised, so utils.get_world_size / is_main_process /
      MetricLogger.synchronize_between_processes take their built-in single-process paths.
    * main_dino.train_one_epoch calls `im.cuda(non_blocking=True)` and `torch.cuda.synchronize()`:
      while it runs, Tensor.cuda is the identity and torch.cuda.synchronize a no-op (restored after).
      `torch.cuda.amp.autocast(False)` works on CPU as is (its FutureWarning is silenced).
    * train_one_epoch uses `student.module` (main_dino wraps the student in DDP): the student is
      wrapped in `_NoDDP`, which only holds `.module` and forwards to it, so parameter names get the
      same "module." prefix as under DDP.
    * utils.setup_for_distributed(True) is called as in init_distributed_mode, so the official
      `print(..., force=True)` (non-finite loss path) works.

Command line (full run; the defaults are configs/mnist5k/esvit.py:v,vit,faithful's recipe):
    mkdir -p /tmp/dino_official && \
      git -C /work/.mirror/facebookresearch+dino/repo archive HEAD -- '*.py' | tar -x -C /tmp/dino_official
    ('*.py' skips the .github/*.png blobs the mirror lacks; an "invalid object" line is harmless)
    python benchmarks/official_dino_mnist5k.py --dino_repo /tmp/dino_official \
        --out workdirs/official_dino_mnist5k/log.jsonl
The shipped recipe (configs/mnist5k/esvit.py:v,vit, remedies from benchmarks/official_dino_remedies.py):
    ... --global_scale 0.8 1 --local_crops_number 4 --local_size 16 --local_scale 0.2 0.5 \
        --no_solarize --init xavier --posemb_init_std 2 --sinkhorn_iters 3 --koleo_weight 0.1
Smoke test: the same with --epochs 1 --local_crops_number 2 --eval_every 1 --max_steps_per_epoch 3

Output: a JSON line per epoch (epoch, mean loss, lr, wd, train_time_s, wall_time_s, and every
--eval_every epochs knn_top1_k10/k20 as fractions), printed and appended to --out; last line
`final: {"knn_top1_k10": ..., "knn_top1_k20": ..., "wall_time_s": ...}`.
Needs torchvision's pure-Python transforms outside the venv (inside, it breaks transformers):
`pip install --no-deps --target /work/tv torchvision==0.29.1`, run with PYTHONPATH=/work/tv.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import random
import sys
import time
import types
import warnings

import torch
from torch import nn

import official_dino_remedies as remedies
from official_dino_data import (LOCAL_SIZE, Mnist5kPIL, TruncatedLoader, eval_transform,
                                mnist_augmentation)



def recipe_parser(description: str, repo_flag: str, repo_help: str) -> argparse.ArgumentParser:
    """The recipe flags shared with official_esvit_mnist5k.py (defaults: esvit.py:v,vit,faithful)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(repo_flag, required=True, help=repo_help)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="ABSOLUTE peak learning rate after warmup. main_dino.py takes a base lr per "
                        "256 images and scales it by batch/256; this script does NOT scale.")
    p.add_argument("--min_lr", type=float, default=1e-6)
    p.add_argument("--warmup_epochs", type=int, default=2)
    p.add_argument("--weight_decay", type=float, default=0.04)
    p.add_argument("--weight_decay_end", type=float, default=0.4)
    p.add_argument("--clip_grad", type=float, default=3.0)
    p.add_argument("--freeze_last_layer", type=int, default=1)
    p.add_argument("--momentum_teacher", type=float, default=0.99)
    p.add_argument("--warmup_teacher_temp", type=float, default=0.02)
    p.add_argument("--teacher_temp", type=float, default=0.02)
    p.add_argument("--warmup_teacher_temp_epochs", type=int, default=0)
    p.add_argument("--out_dim", type=int, default=1024)
    p.add_argument("--local_crops_number", type=int, default=6)
    p.add_argument("--global_scale", type=float, nargs=2, default=(0.4, 1.0))
    p.add_argument("--local_scale", type=float, nargs=2, default=(0.05, 0.4))
    p.add_argument("--local_size", type=int, default=LOCAL_SIZE, help="local crop side in px")
    p.add_argument("--no_solarize", action="store_true",
                   help="remedy: drop utils.Solarization from the global pipeline")
    # the remedies of configs/mnist5k/esvit.py:v,vit (benchmarks/official_dino_remedies.py)
    p.add_argument("--init", choices=("dino", "xavier"), default="dino",
                   help="dino: the official init; xavier: vit_jax's weight_init='mae'")
    p.add_argument("--posemb_init_std", type=float, default=0.02)
    p.add_argument("--sinkhorn_iters", type=int, default=0, help="> 0: Sinkhorn-Knopp targets")
    p.add_argument("--koleo_weight", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_every", type=int, default=5,
                   help="k-NN eval every N epochs (and always after the last)")
    p.add_argument("--max_steps_per_epoch", type=int, default=0,
                   help="smoke tests: truncate each epoch to N steps (0 = full epoch); the "
                        "schedules are then built for the truncated epoch length. (Also for "
                        "smoke tests: a --warmup_epochs above --epochs is cut to --epochs.)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    p.add_argument("--out", default="", help="JSON-lines log path (appended to)")
    return p


def parse_args(argv=None):
    return recipe_parser(__doc__.split("\n")[0], "--dino_repo",
                         "checkout of facebookresearch/dino (main_dino.py, utils.py, ...)").parse_args(argv)


# ----------------------------------------------------------------------------- imports / shims
def _import_torchvision_python_only():
    """Import torchvision.transforms (pure Python) without torchvision/__init__.py, whose C
    extension does not load on this CPU torch build. main_dino / eval_knn also import
    torchvision.datasets and torchvision.models at module level; both import this way too."""
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("needs torchvision's Python files: pip install --no-deps torchvision")
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = pkg


def import_official(repo: str):
    for f in ("main_dino.py", "utils.py", "vision_transformer.py", "eval_knn.py"):
        if not os.path.isfile(os.path.join(repo, f)):
            raise FileNotFoundError(f"{repo} has no {f}: --dino_repo must be a DINO checkout")
    _import_torchvision_python_only()
    sys.path.insert(0, os.path.abspath(repo))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import eval_knn
        import main_dino
        import utils
        import vision_transformer
    return types.SimpleNamespace(main_dino=main_dino, utils=utils, vits=vision_transformer,
                                 eval_knn=eval_knn)


class _SingleProcessDist:
    """Stands in for `torch.distributed` inside main_dino only: world size 1."""

    def __init__(self, real):
        self._real = real

    @staticmethod
    def all_reduce(tensor, *args, **kwargs):   # sum over one process = identity
        return None

    @staticmethod
    def get_world_size(*args, **kwargs):
        return 1

    def __getattr__(self, name):
        return getattr(self._real, name)


class _NoDDP(nn.Module):
    """What train_one_epoch needs of DistributedDataParallel on one process: `.module` + forward."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@contextlib.contextmanager
def _cpu_shims():
    """While train_one_epoch runs: Tensor.cuda -> identity, torch.cuda.synchronize -> no-op."""
    saved_cuda, saved_sync = torch.Tensor.cuda, torch.cuda.synchronize
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*")
            warnings.filterwarnings("ignore", message=r".*CUDA is not available.*")
            yield
    finally:
        torch.Tensor.cuda, torch.cuda.synchronize = saved_cuda, saved_sync


# ----------------------------------------------------------------------------- model / eval
def build_backbone(official, drop_path_rate):
    return official.vits.VisionTransformer(
        patch_size=4, img_size=[28], in_chans=1, embed_dim=128, depth=6, num_heads=4,
        mlp_ratio=2, qkv_bias=True, drop_path_rate=drop_path_rate,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))  # as vits.vit_tiny/small/base


def build_head(official, out_dim):
    return official.vits.DINOHead(128, out_dim, use_bn=False, norm_last_layer=True, nlayers=3,
                                  hidden_dim=512, bottleneck_dim=128)


@torch.no_grad()
def extract_features(backbone, loader):
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(backbone(x))
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def knn_eval(official, backbone, memory_loader, query_loader, ks=(10, 20), T=0.07):
    """eval_knn.py's protocol: L2-normalised features, then eval_knn.knn_classifier."""
    train_f, train_y = extract_features(backbone, memory_loader)
    test_f, test_y = extract_features(backbone, query_loader)
    train_f = nn.functional.normalize(train_f, dim=1, p=2)
    test_f = nn.functional.normalize(test_f, dim=1, p=2)
    out = {}
    with _cpu_shims():   # EsViT's copy of knn_classifier allocates with .cuda()
        for k in ks:
            top1, _ = official.eval_knn.knn_classifier(train_f, train_y, test_f, test_y, k, T,
                                                       num_classes=10)
            out[f"knn_top1_k{k}"] = round(top1 / 100.0, 6)   # official returns percent
    return out


# ----------------------------------------------------------------------------- shared by the runners
def seed_everything(utils, seed: int) -> None:
    """As main_dino.train_dino / main_esvit.train_esvit: single process, then fix_random_seeds."""
    utils.setup_for_distributed(True)
    utils.fix_random_seeds(seed)
    random.seed(seed)           # utils.GaussianBlur / Solarization draw from `random`


def make_loaders(args, aug):
    """(train loader of `aug`'s crops, k-NN memory loader, k-NN query loader) on mnist5k."""
    for name in ("global_transfo1", "global_transfo2", "local_transfo"):
        print(f"  {name}:", getattr(aug, name))
    train_set = Mnist5kPIL("train", aug)
    gen = torch.Generator().manual_seed(args.seed)
    data_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch, shuffle=True,
                                              drop_last=True, num_workers=args.workers,
                                              generator=gen)
    if args.max_steps_per_epoch > 0:
        data_loader = TruncatedLoader(data_loader, args.max_steps_per_epoch)
    memory_loader = torch.utils.data.DataLoader(Mnist5kPIL("train", eval_transform()),
                                                batch_size=500, shuffle=False)
    query_loader = torch.utils.data.DataLoader(Mnist5kPIL("test", eval_transform()),
                                               batch_size=500, shuffle=False)
    print(f"Data loaded: {len(train_set)} train images, {len(data_loader)} steps/epoch, "
          f"{len(query_loader.dataset)} k-NN queries.")
    return data_loader, memory_loader, query_loader


def make_schedules(utils, args, steps_per_epoch: int):
    """utils.cosine_scheduler for lr (absolute, not rescaled), weight decay and teacher momentum."""
    if args.warmup_epochs > args.epochs:   # utils.cosine_scheduler asserts otherwise (smoke tests)
        print(f"note: warmup_epochs {args.warmup_epochs} > epochs {args.epochs}: "
              f"using warmup_epochs = {args.epochs}")
        args.warmup_epochs = args.epochs
    return (utils.cosine_scheduler(args.lr, args.min_lr, args.epochs, steps_per_epoch,
                                   warmup_epochs=args.warmup_epochs),
            utils.cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs,
                                   steps_per_epoch),
            utils.cosine_scheduler(args.momentum_teacher, 1, args.epochs, steps_per_epoch))


def train_and_log(args, train_epoch, evaluate) -> dict:
    """Calls train_epoch(epoch) -> official stats for every epoch and evaluate() -> k-NN dict every
    --eval_every epochs and after the last; a JSON line per epoch (printed, appended to --out)."""
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    final = {}
    start = time.time()
    for epoch in range(args.epochs):
        with _cpu_shims():
            stats = train_epoch(epoch)
        rec = {"epoch": epoch + 1, "loss": stats["loss"], "lr": stats["lr"], "wd": stats["wd"],
               "train_time_s": time.time() - start}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            rec.update(evaluate())
            final = {k: rec[k] for k in ("knn_top1_k10", "knn_top1_k20")}
        rec["wall_time_s"] = time.time() - start
        line = json.dumps(rec)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    final["wall_time_s"] = time.time() - start
    print("final: " + json.dumps(final), flush=True)
    return final


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    official = import_official(args.dino_repo)
    main_dino, utils = official.main_dino, official.utils
    main_dino.dist = _SingleProcessDist(main_dino.dist)
    seed_everything(utils, args.seed)

    aug = mnist_augmentation(official, args.global_scale, args.local_scale, args.local_crops_number,
                             args.local_size, solarize=not args.no_solarize)
    print("augmentation (official DataAugmentationDINO, sizes/flip/normalisation edited):")
    data_loader, memory_loader, query_loader = make_loaders(args, aug)

    # ---- networks, as in main_dino.train_dino (no batchnorm -> teacher_without_ddp = teacher)
    student = utils.MultiCropWrapper(build_backbone(official, 0.1), build_head(official, args.out_dim))
    teacher = utils.MultiCropWrapper(build_backbone(official, 0.0), build_head(official, args.out_dim))
    assert not utils.has_batchnorms(student)
    if args.init == "xavier":
        remedies.xavier_init(student.backbone)
    if args.init == "xavier" or args.posemb_init_std != 0.02:   # else the official draw stands
        remedies.init_pos_embed(student.backbone, args.posemb_init_std, xavier=args.init == "xavier")
    teacher_without_ddp = teacher
    student = _NoDDP(student)
    teacher_without_ddp.load_state_dict(student.module.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    n_params = sum(p.numel() for p in student.module.backbone.parameters())
    print(f"Student and teacher built: ViT backbone {n_params / 1e6:.3f}M params.")

    # ---- loss, optimizer, schedules (as main_dino.train_dino, but lr not rescaled)
    dino_loss = remedies.make_loss(main_dino.DINOLoss, args.out_dim, args.local_crops_number + 2,
                                   args.warmup_teacher_temp, args.teacher_temp,
                                   args.warmup_teacher_temp_epochs, args.epochs,
                                   sinkhorn_iters=args.sinkhorn_iters,
                                   koleo_weight=args.koleo_weight, student_wrapper=student.module)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    lr_schedule, wd_schedule, momentum_schedule = make_schedules(utils, args, len(data_loader))
    # train_one_epoch reads these from args under main_dino's names
    train_args = argparse.Namespace(epochs=args.epochs, clip_grad=args.clip_grad,
                                    freeze_last_layer=args.freeze_last_layer)
    return train_and_log(
        args,
        lambda epoch: main_dino.train_one_epoch(student, teacher, teacher_without_ddp, dino_loss,
                                                data_loader, optimizer, lr_schedule, wd_schedule,
                                                momentum_schedule, epoch, None, train_args),
        lambda: knn_eval(official, teacher_without_ddp.backbone, memory_loader, query_loader))


if __name__ == "__main__":
    main()
