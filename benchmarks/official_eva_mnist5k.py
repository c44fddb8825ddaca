"""Reference run: the OFFICIAL baaivision/EVA (EVA-01) pre-training code on mnist5k, on CPU.

What it is
    A baseline beside vit_jax's EVA (configs/mnist5k/eva_pretrain.py, the digit teacher). Every
    student-side piece is imported from an unmodified checkout of https://github.com/baaivision/EVA
    (its EVA-01/eva folder, given by --eva_repo and put on sys.path); none of its code is copied here:
      modeling_pretrain.py     VisionTransformerForMaskedImageModeling (mask token replacing the
                               masked patch embeddings, class token, absolute position embedding,
                               blocks of modeling_finetune.py, final norm, lm_head on the masked
                               tokens; trunc-normal init at init_std and fix_init_weight)
      masking_generator.py     MaskingGenerator (BEiT's block-wise masks)
      transforms.py            RandomResizedCropAndInterpolationWithTwoResolution (the crop)
      optim_factory.py         create_optimizer (AdamW; no decay on biases, 1-D tensors and the
                               model's no_weight_decay() = pos_embed, cls_token)
      utils.py                 cosine_scheduler (per-step lr and wd values),
                               NativeScalerWithGradNormCount (backward, clip, step), MetricLogger
      engine_for_pretraining   train_one_epoch (the per-step lr, the teacher call, -cosine
                               compute_loss on the masked tokens), called once per epoch as
                               run_eva_pretraining.main does
    run_eva_pretraining.main itself is not imported (it parses its own argv, builds a CLIP
    teacher and an ImageFolder); its steps are done here in its order.

The teacher is ours, the same as our run's: EVA's teacher is CLIP, and the comparison is of the
student's training, so `--teacher workdir:workdirs/quickstart` is loaded with vit_jax.teachers
(eva.teacher_view="native", as configs/mnist5k/eva_pretrain.py) and wrapped in an object with the
official teacher's one method, infer_image({"image": [images]}) -> (B, 49, dim) targets: the
teacher's final-norm patch tokens of the digit at 28 px, its 4x4 token map resized to the 7x7
grid, exactly what our objective regresses (EVAObjective._targets, same function).

What it changes (only what a 28x28x1 dataset and our recipe force; nothing in the training logic)
    * Model: img_size 28, patch 4, in_chans 1, width 128, depth 6, 4 heads, mlp_ratio 2, qkv bias,
      LayerNorm eps 1e-6, init_std 0.02, no layer scale (layer_scale_init_value 0, its default),
      predict_feature_dim = the teacher's width: 819,712 trainable parameters with the 128-d digit
      teacher, ours 820,480. The 768 apart are our key biases (6 blocks x 128): EVA's attention
      (BEiT's) has query and value biases only. A key bias adds q.b to every logit of a query
      alike, which the softmax cancels, so the two compute the same functions.
    * Masks: MaskingGenerator((7, 7), num_masking_patches=20, min_num_patches=4): ours (40% of 49,
      blocks of at least 4; EVA-01: 105 of 256, at least 16). masking_generator uses np.int
      (gone from numpy 2): np.int = int while this script runs.
    * Data: vit_jax.data.mnist5k "train" (4,000) instead of an ImageFolder, through the official
      DataAugmentationForEVA's steps: the two-resolution RandomResizedCrop at 28 px for both the
      student and the teacher, scale (0.5, 1) (ours; official (0.2, 1)), bilinear; no
      RandomHorizontalFlip (digits are not mirror-symmetric; ours has none); Normalize(0.1307,
      0.3081) for both images (our teacher renormalises from the student's statistics).
    * Epochs: the official loader drops the last partial batch and counts floor(4000 / 128) = 31
      steps per epoch, so 60 epochs are 1,860 steps (ours 1,875; 0.8% fewer).
    * Optimizer and schedule: ours, which are EVA's defaults but for the lr: lr 1e-3 (absolute),
      AdamW b2 0.98, eps 1e-6, wd 0.05 (constant), clip 3.0, 60 linear warm-up steps from 0, cosine
      to min_lr 0 (ours; official default 1e-5).

How the official code runs on CPU (process-local shims)
    * timm 0.4.12 (the EVA/BEiT era's; `pip install --no-deps --target /work/esvit_deps
      timm==0.4.12`), torchvision's pure-Python transforms (/work/tv): PYTHONPATH=/work/tv:/work/esvit_deps.
    * utils.py imports torch._six (gone from torch 2: a stand-in with inf), tensorboardX and sh
      (only for loggers and checkpoint clean-up, never called here: empty stand-in modules).
    * engine_for_pretraining all-gathers the loss over torch.distributed: its module-level `dist`
      is, for this single process, a stand-in whose world size is 1 and whose all_gather copies.
    * torch.cuda.amp.autocast and GradScaler disable themselves without CUDA (fp32, as our
      float32 run); a disabled GradScaler's state_dict is empty, so the scaler's state_dict, read
      only for logging, reports scale 1.0. torch.cuda.synchronize is a no-op while training.

Command line (full run; defaults are configs/mnist5k/eva_pretrain.py's recipe)
    mkdir -p /tmp/eva_official && git --git-dir=/work/.mirror/baaivision+EVA/repo \
        archive HEAD -- EVA-01/eva | tar -x -C /tmp/eva_official
    PYTHONPATH=/work/tv:/work/esvit_deps python benchmarks/official_eva_mnist5k.py \
        --eva_repo /tmp/eva_official/EVA-01/eva --teacher workdir:workdirs/quickstart \
        --epochs 60 --seed 0 --out workdirs/official/eva_60ep.jsonl
Smoke test: the same with --epochs 1 --out '' (about a minute).
Measured (2026-12-06, today's quickstart teacher, 97.5%; seeds 0, 1, 2, three side by side on the
2-core CPU, torch on 1 thread each, 31 min 18 s, 31 min 13 s, 31 min 13 s): class-token k-NN
(k=10 / 20) 94.4 / 94.1, 83.8 / 83.8, 95.6 / 95.9 (88.3, 74.9, 89.4 at epoch 20; 92.5, 81.5, 94.8
at 40); mean patch token 92.5, 90.1, 92.5. README's small-data table puts them beside ours.

Output: a JSON line per epoch (mean loss, steps, times; k-NN top-1 as fractions
knn_{cls,gap}_k{10,20} when evaluated) and a last line `final: {...}`, appended to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import types
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from official_dino_data import MNIST_MEAN, MNIST_STD, Mnist5kPIL, eval_transform
from official_dino_mnist5k import _cpu_shims, _import_torchvision_python_only
from official_mae_mnist5k import knn_eval, write_final
from vit_jax import teachers

GRID = (7, 7)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--eva_repo", required=True, help="the EVA-01/eva folder of baaivision/EVA")
    p.add_argument("--teacher", default="workdir:workdirs/quickstart")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min_lr", type=float, default=0.0)
    p.add_argument("--warmup_steps", type=int, default=60)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--clip_grad", type=float, default=3.0)
    p.add_argument("--num_mask_patches", type=int, default=20)
    p.add_argument("--min_mask_patches_per_block", type=int, default=4)
    p.add_argument("--crop_scale", type=float, nargs=2, default=(0.5, 1.0))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_every", type=int, default=0, help="k-NN every N epochs (0: only after the last)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", default="workdirs/official/eva_60ep.jsonl",
                   help="JSON-lines file the final line is appended to ('' = none)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- imports / shims
def _stand_in(name: str, **attrs) -> None:
    if name not in sys.modules:
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.SimpleNamespace(**attrs)


def import_official(repo: str) -> types.SimpleNamespace:
    repo = os.path.abspath(repo)
    files = ("modeling_pretrain.py", "modeling_finetune.py", "masking_generator.py", "transforms.py",
             "optim_factory.py", "utils.py", "engine_for_pretraining.py")
    for f in files:
        if not os.path.isfile(os.path.join(repo, f)):
            raise FileNotFoundError(f"{repo} has no {f}: --eva_repo must be the EVA-01/eva folder")
    _import_torchvision_python_only()
    _stand_in("torch._six", inf=math.inf)
    _stand_in("tensorboardX", SummaryWriter=None)
    _stand_in("sh")
    sys.path.insert(0, repo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import engine_for_pretraining
        import masking_generator
        import modeling_pretrain
        import optim_factory
        import transforms
        import utils
    mods = (engine_for_pretraining, masking_generator, modeling_pretrain, optim_factory, transforms, utils)
    for m in mods:
        if not os.path.abspath(m.__file__).startswith(repo):
            raise ImportError(f"{m.__name__} came from {m.__file__}, not {repo}")
    # one process: the engine's all_gather of the loss over a world of one
    engine_for_pretraining.dist = types.SimpleNamespace(
        get_world_size=lambda: 1, all_gather=lambda out, t: out[0].copy_(t))
    return types.SimpleNamespace(engine=engine_for_pretraining, masking=masking_generator,
                                 modeling=modeling_pretrain, optim=optim_factory,
                                 transforms=transforms, utils=utils)


# ----------------------------------------------------------------------------- teacher
class DigitTeacher:
    """Our frozen teacher behind the official teacher's interface (see the module docstring)."""

    def __init__(self, spec: str):
        self.teacher = teachers.load(spec, jnp.float32, "native")
        self.teacher.check_student(GRID, 1)
        self.dim = self.teacher.dim
        self._params = self.teacher.variables["params"]
        self._targets = jax.jit(lambda p, x: self.teacher.targets(p, x, MNIST_MEAN, MNIST_STD, GRID))

    def infer_image(self, inputs: dict) -> torch.Tensor:
        """{"image": [(B, 1, 28, 28) student-normalised]} -> (B, 49, dim) float32 targets."""
        x = inputs["image"][0].permute(0, 2, 3, 1).contiguous().numpy()
        return torch.from_numpy(np.array(self._targets(self._params, x)))


# ----------------------------------------------------------------------------- data
class EVADigitAugmentation:
    """DataAugmentationForEVA's steps for digits (see the module docstring): one crop at two
    resolutions (both 28) -> (student image, teacher image, block mask)."""

    def __init__(self, official: types.SimpleNamespace, scale, num_mask: int, min_block: int):
        from torchvision import transforms as T   # after _import_torchvision_python_only
        self.crop = official.transforms.RandomResizedCropAndInterpolationWithTwoResolution(
            size=28, second_size=28, scale=tuple(scale), interpolation="bilinear",
            second_interpolation="bilinear")
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(MNIST_MEAN, MNIST_STD)])
        self.masks = official.masking.MaskingGenerator(GRID, num_masking_patches=num_mask,
                                                       min_num_patches=min_block)

    def __call__(self, image):
        for_patches, for_teacher = self.crop(image)
        return self.to_tensor(for_patches), self.to_tensor(for_teacher), self.masks()


# ----------------------------------------------------------------------------- model / eval
def build_model(official: types.SimpleNamespace, target_dim: int) -> nn.Module:
    return official.modeling.VisionTransformerForMaskedImageModeling(
        img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), init_std=0.02,
        predict_feature_dim=target_dim, use_abs_pos_emb=True, init_values=0)


@torch.no_grad()
def encoder_features(model: nn.Module, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class token, mean patch token) after the final norm, nothing masked."""
    x = model.forward_features(imgs, torch.zeros(imgs.shape[0], GRID[0] * GRID[1], dtype=torch.bool))
    return x[:, 0], x[:, 1:].mean(dim=1)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    had_np_int = "int" in np.__dict__
    np.int = int   # masking_generator's np.zeros(..., dtype=np.int)
    try:
        return _train(args)
    finally:
        if not had_np_int:
            del np.int


def _train(args: argparse.Namespace) -> dict:
    official = import_official(args.eva_repo)
    torch.manual_seed(args.seed)   # as run_eva_pretraining.main (rank 0)
    np.random.seed(args.seed)
    random.seed(args.seed)         # the crop and the masks draw from Python's random
    teacher = DigitTeacher(args.teacher)
    model = build_model(official, teacher.dim)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"VisionTransformerForMaskedImageModeling: {n_params:,} trainable parameters; "
          f"teacher {args.teacher} ({teacher.dim}-d targets)", flush=True)

    aug = EVADigitAugmentation(official, args.crop_scale, args.num_mask_patches,
                               args.min_mask_patches_per_block)
    train_set = Mnist5kPIL("train", aug)
    steps_per_epoch = len(train_set) // args.batch   # run_eva_pretraining: drop_last=True
    loader = torch.utils.data.DataLoader(
        train_set, sampler=torch.utils.data.RandomSampler(train_set), batch_size=args.batch,
        drop_last=True, num_workers=0)
    memory = torch.utils.data.DataLoader(Mnist5kPIL("train", eval_transform()), batch_size=500)
    queries = torch.utils.data.DataLoader(Mnist5kPIL("test", eval_transform()), batch_size=500)

    opt_args = argparse.Namespace(opt="adamw", lr=args.lr, weight_decay=args.weight_decay,
                                  opt_eps=1e-6, opt_betas=[0.9, 0.98], momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = official.optim.create_optimizer(opt_args, model)
        loss_scaler = official.utils.NativeScalerWithGradNormCount()
    loss_scaler.state_dict = lambda: {"scale": 1.0}   # a disabled GradScaler's is {} (logging only)
    lr_values = official.utils.cosine_scheduler(args.lr, args.min_lr, args.epochs, steps_per_epoch,
                                                warmup_epochs=1, warmup_steps=args.warmup_steps)
    wd_values = official.utils.cosine_scheduler(args.weight_decay, args.weight_decay, args.epochs,
                                                steps_per_epoch)
    train_args = argparse.Namespace(output_dir="", auto_resume_iter=False)
    print(f"{len(train_set)} train digits, {args.epochs * steps_per_epoch} steps of {args.batch} "
          f"({steps_per_epoch} per epoch), lr {args.lr}, wd {args.weight_decay}", flush=True)

    start, final, rec = time.time(), {}, {}
    for epoch in range(args.epochs):
        t0 = time.time()
        with _cpu_shims(), open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet   # the MetricLogger prints every step
            try:
                stats = official.engine.train_one_epoch(
                    model, teacher, loader, optimizer, torch.device("cpu"), epoch, loss_scaler,
                    num_training_steps_per_epoch=steps_per_epoch, max_norm=args.clip_grad,
                    start_steps=epoch * steps_per_epoch, lr_schedule_values=lr_values,
                    wd_schedule_values=wd_values, update_freq=1, beit_like=True, args=train_args)
            finally:
                sys.stdout = stdout
        rec = {"epoch": epoch + 1, "steps": steps_per_epoch, "loss": round(stats["loss"], 5),
               "lr_last": stats["lr"], "grad_norm": round(float(stats["grad_norm"]), 4),
               "epoch_time_s": round(time.time() - t0, 1)}
        if epoch + 1 == args.epochs or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            rec.update(knn_eval(model, memory, queries, features=encoder_features))
            final = {k: v for k, v in rec.items() if k.startswith("knn_")}
        rec["wall_time_s"] = round(time.time() - start, 1)
        print(json.dumps(rec), flush=True)
    final = {"run": "official_eva", "teacher": args.teacher, "epochs": args.epochs,
             "steps": args.epochs * steps_per_epoch, "final_loss": rec.get("loss"), **final,
             "wall_time_s": round(time.time() - start, 1), "threads": args.threads, "seed": args.seed}
    write_final(final, args.out)
    return final


if __name__ == "__main__":
    main()
