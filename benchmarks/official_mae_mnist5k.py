"""Reference run: the OFFICIAL facebookresearch/mae pre-training code on our mnist5k split, on CPU.

What it is
    A baseline beside vit_jax's MAE (configs/mnist5k/mae_pretrain.py). Every modelling/training
    piece is imported from an unmodified checkout of https://github.com/facebookresearch/mae given by
    --mae_repo (put on sys.path); none of its code is copied here:
      models_mae.py        MaskedAutoencoderViT (patch embedding, random masking, encoder, decoder,
                           masked-patch MSE, xavier / sin-cos init)
      engine_pretrain.py   train_one_epoch, called once per epoch as main_pretrain.main does
      util/lr_sched.py     adjust_learning_rate (per-iteration linear warm-up + half-cycle cosine;
                           called inside train_one_epoch)
      util/misc.py         NativeScalerWithGradNormCount (backward, grad norm, optimizer step) and
                           MetricLogger (inside train_one_epoch)
      util/pos_embed.py    get_2d_sincos_pos_embed (inside the model's initialize_weights)
    main_pretrain.main itself is not imported (it parses its own argv, asserts timm==0.3.2 and
    reads an ImageFolder); its steps are done here in its order: seeds, model, param groups,
    AdamW(betas=(0.9, 0.95)), loss scaler, the epoch loop. At the end (and every --eval_every
    epochs) a weighted k-NN (vit_jax.evaluate.knn.knn_predict: cosine, T=0.07, k=10/20, DINO's
    protocol, the function behind our README's k-NN numbers) classifies the 1,000 test digits
    against the 4,000 train digits on (a) the class token after the encoder's final norm and
    (b) the mean of the 49 final-norm patch tokens. Those features come from the official
    encoder's own modules with no masking: patch_embed, + pos_embed[:, 1:], cls_token +
    pos_embed[:, :1] prepended, blocks, norm (forward_encoder's order, random_masking skipped).

What it changes (only what a 28x28x1 dataset and our recipe force; nothing in the training logic)
    * Model: MaskedAutoencoderViT(img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6,
      num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mlp_ratio=2,
      LayerNorm eps 1e-6 as in the official mae_vit_* factories, norm_pix_loss=False): with the
      decoder MLP below, 906,896 trainable parameters (797,440 encoder), the count of ours.
    * Decoder MLP: the official constructor shares one mlp_ratio between encoder and decoder;
      ours decodes at mae.decoder_mlp_ratio=4 (MLP 256). decoder_blocks are rebuilt with the same
      Block call at ratio 4, then the model's initialize_weights() runs again.
    * patchify: the official one hard-codes 3 channels (reshape to (N, 3, h, p, w, p)); the
      instance gets a channel-generic one with the same (row, column, channel) order, so the
      targets have decoder_pred's p*p*in_chans = 16 values (unpatchify is never called).
    * Data: vit_jax.data.mnist5k "train" (4,000) instead of an ImageFolder. Augmentation is ours,
      rrc(28, scale=(0.5, 1.0)) | normalize('mnist'): RandomResizedCrop(28, (0.5, 1), bilinear as
      our PIL resize; official 224, (0.2, 1), bicubic), no RandomHorizontalFlip (digits are not
      mirror-symmetric), Normalize(0.1307, 0.3081).
    * Batches: configs/mnist5k/mae_pretrain.py leaves data.drop_remainder False, and our loader is
      then an endless stream of per-epoch permutations cut into FULL batches (no partial batch, no
      dropped digit): 60 epochs = round(60 * 4000 / 128) = 1875 steps. The same stream is built
      here (torch.randperm per epoch, concatenated); official epoch e gets stream steps
      [round(e * 31.25), round((e + 1) * 31.25)) = 31 or 32 batches, as the batch_sampler of a
      DataLoader. (The official drop_last=True loader would give 31 steps, 1860 in all.)
    * lr: --lr is the ABSOLUTE peak (main_pretrain's --lr; no blr * batch / 256 rule). Warm-up:
      lr_sched takes epochs, so ours of 60 steps is warmup_epochs = 60 / 31.25 = 1.92; cosine to
      min_lr 0. lr_sched sees t = e + i / len(loader) rather than step / 31.25, so with 31- or
      32-step epochs its lr is at most half a step ahead of or behind ours (largest gap 7.9e-6,
      at step 59 of the 1875).
    * Weight decay 0.05 (our base_config) on main_pretrain's groups (timm's add_weight_decay):
      none on biases and 1-D params. Here timm.optim.param_groups_weight_decay, the same rule
      (ndim <= 1 or name ending '.bias'; frozen pos_embeds skipped). So cls_token and mask_token
      ARE decayed, as in the official run (and in ours since 2026-12-05: MAEObjective
      weight_decay_rule="dino"; before, timm's rule spared them).

How the official code runs on CPU (process-local shims)
    * timm: models_mae imports timm.models.vision_transformer's PatchEmbed and Block. For this
      script only: `pip install --no-deps timm` into the venv (--no-deps: timm's requirements
      would pull a CUDA torch); timm is not a vit_jax dependency. PatchEmbed(28, 4, 1, 128) is a
      4x4 stride-4 Conv2d giving 49 tokens. models_mae calls Block(..., qk_scale=None, ...),
      which new timm rejects: while models_mae is imported, timm's Block is a wrapper that drops
      qk_scale=None (= the default head_dim ** -0.5 scale: the same computation).
    * util/misc.py does `from torch._six import inf` (gone from torch 2): a stand-in
      module torch._six with inf = math.inf is registered if absent.
    * util/pos_embed.py uses np.float (gone from numpy 2): np.float = float while the model is
      built (removed afterwards).
    * engine_pretrain: `torch.cuda.amp.autocast()` disables itself without CUDA (fp32, as our
      float32 run; the official GPU run would be fp16), misc's torch.cuda.amp.GradScaler too (so
      scale/unscale are identities and step is optimizer.step()); torch.cuda.synchronize is a
      no-op (and Tensor.cuda the identity) while train_one_epoch runs (official_dino_mnist5k's
      _cpu_shims); device = cpu; log_writer = None; torch.distributed is never initialised, so
      misc takes its world-size-1 paths.
    * torchvision: its pure-Python transforms only (official_dino_mnist5k's
      _import_torchvision_python_only), from /work/tv: run with PYTHONPATH=/work/tv.

Command line (full run, the defaults are configs/mnist5k/mae_pretrain.py's recipe)
    mkdir -p /tmp/mae_official && git --git-dir=/work/.mirror/facebookresearch+mae/repo \
        archive HEAD | tar -x -C /tmp/mae_official
    pip install --no-deps timm          # into the venv; tested with timm 1.0.31
    PYTHONPATH=/work/tv nice -n 10 python benchmarks/official_mae_mnist5k.py \
        --mae_repo /tmp/mae_official --epochs 60 --out workdirs/official/mae_60ep.jsonl
Smoke test: the same with --epochs 2 --eval_every 1 --out /tmp/mae_smoke.jsonl (about 35 s).
Output: the official MetricLogger lines (loss every 20 steps), a JSON line per epoch (mean loss,
mean lr, steps, times; k-NN top-1 as fractions knn_{cls,gap}_k{10,20} when evaluated) and a last
line `final: {...}` (the last k-NN, final loss, wall time), which alone is appended to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time
import types
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from official_dino_data import MNIST_MEAN, MNIST_STD, Mnist5kPIL, eval_transform
from official_dino_mnist5k import _cpu_shims, _import_torchvision_python_only
from vit_jax.evaluate.knn import knn_predict

WARMUP_STEPS = 60          # configs/mnist5k/mae_pretrain.py: optim.warmup_steps
DECODER_MLP_RATIO = 4.0    # MAEObjective.defaults, not overridden by the config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mae_repo", required=True, help="checkout of facebookresearch/mae")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="ABSOLUTE peak lr (no batch/256 rule)")
    p.add_argument("--min_lr", type=float, default=0.0)
    p.add_argument("--warmup_steps", type=int, default=WARMUP_STEPS,
                   help="converted to lr_sched's warmup_epochs = steps / (num_train / batch)")
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--mask_ratio", type=float, default=0.75)
    p.add_argument("--crop_scale", type=float, nargs=2, default=(0.5, 1.0))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_every", type=int, default=0,
                   help="k-NN every N epochs (0: only after the last)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    p.add_argument("--out", default="workdirs/official/mae_60ep.jsonl",
                   help="JSON-lines file the final line is appended to ('' = none)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- imports / shims
@contextlib.contextmanager
def _timm_block_without_qk_scale():
    """timm's Block, while models_mae imports it, as a wrapper dropping qk_scale=None."""
    import timm.models.vision_transformer as tvit
    block = tvit.Block

    def block_shim(*args, qk_scale=None, **kwargs):
        if qk_scale is not None:   # only None (the default scale) is the same computation
            raise ValueError(f"qk_scale={qk_scale} is not supported by this timm")
        return block(*args, **kwargs)

    tvit.Block = block_shim
    try:
        yield
    finally:
        tvit.Block = block


@contextlib.contextmanager
def _numpy_float_alias():
    """np.float = float while util/pos_embed.py runs (numpy >= 1.24 removed the alias)."""
    had = "float" in np.__dict__
    if not had:
        np.float = float
    try:
        yield
    finally:
        if not had:
            del np.float


def import_official(repo: str) -> types.SimpleNamespace:
    """The official modules, imported from `repo` with the shims above."""
    repo = os.path.abspath(repo)
    for f in ("models_mae.py", "engine_pretrain.py", "util/misc.py", "util/lr_sched.py",
              "util/pos_embed.py"):
        if not os.path.isfile(os.path.join(repo, f)):
            raise FileNotFoundError(f"{repo} has no {f}: --mae_repo must be an MAE checkout")
    _import_torchvision_python_only()   # timm imports torchvision.transforms
    if "torch._six" not in sys.modules:
        try:
            import torch._six  # noqa: F401
        except ImportError:
            six = types.ModuleType("torch._six")
            six.inf = math.inf
            sys.modules["torch._six"] = six
    sys.path.insert(0, repo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # timm's / torch's deprecation notes
        import timm.optim
        with _timm_block_without_qk_scale():
            import models_mae
        import engine_pretrain
        import util.lr_sched
        import util.misc
        import util.pos_embed
    for m in (models_mae, engine_pretrain, util.misc, util.lr_sched, util.pos_embed):
        if not os.path.abspath(m.__file__).startswith(repo):   # e.g. another `util` on sys.path
            raise ImportError(f"{m.__name__} came from {m.__file__}, not {repo}")
    return types.SimpleNamespace(models_mae=models_mae, engine=engine_pretrain, misc=util.misc,
                                 timm_optim=timm.optim)


# ----------------------------------------------------------------------------- model
def patchify_channels(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), patches row-major, inside one (row, column, channel) --
    the official patchify's layout for any channel count (it hard-codes C = 3)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def build_model(official: types.SimpleNamespace, decoder_mlp_ratio: float = DECODER_MLP_RATIO
                ) -> nn.Module:
    mm = official.models_mae
    norm = functools.partial(nn.LayerNorm, eps=1e-6)   # as the official mae_vit_* factories
    with _numpy_float_alias():
        model = mm.MaskedAutoencoderViT(
            img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
            decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mlp_ratio=2,
            norm_layer=norm, norm_pix_loss=False)
        # ours: encoder MLP 256 (ratio 2), decoder MLP 256 (ratio 4); the official shares one ratio
        model.decoder_blocks = nn.ModuleList(
            mm.Block(64, 4, decoder_mlp_ratio, qkv_bias=True, qk_scale=None, norm_layer=norm)
            for _ in range(2))
        model.initialize_weights()   # the official init, now on the rebuilt decoder blocks too
    model.patchify = functools.partial(patchify_channels, p=4)   # 1 channel (see docstring)
    return model


@torch.no_grad()
def encoder_features(model: nn.Module, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class token, mean patch token) after the final norm, all 49 patches visible: the official
    forward_encoder's modules in its order, without random_masking."""
    x = model.patch_embed(imgs) + model.pos_embed[:, 1:, :]
    cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    x = model.norm(x)
    return x[:, 0], x[:, 1:].mean(dim=1)


def knn_eval(model: nn.Module, memory: torch.utils.data.DataLoader,
             queries: torch.utils.data.DataLoader, ks: tuple[int, ...] = (10, 20),
             features: Callable = encoder_features) -> dict:
    """Weighted k-NN top-1 (fractions) on the class token ("cls") and mean patch token ("gap");
    `features(model, images)` -> (class tokens, mean patch tokens), by default MAE's encoder."""
    was_training = model.training
    model.eval()
    feats = {}
    for name, loader in (("memory", memory), ("query", queries)):
        cls, gap, ys = [], [], []
        for x, y in loader:
            c, g = features(model, x)
            cls.append(c.numpy())
            gap.append(g.numpy())
            ys.append(y.numpy())
        feats[name] = {"cls": np.concatenate(cls), "gap": np.concatenate(gap),
                       "y": np.concatenate(ys)}
    model.train(was_training)
    out = {}
    for kind in ("cls", "gap"):
        preds = knn_predict(feats["memory"][kind], feats["memory"]["y"], feats["query"][kind],
                            num_classes=10, ks=ks, temperature=0.07)
        for k in ks:
            out[f"knn_{kind}_k{k}"] = round(float((preds[k] == feats["query"]["y"]).mean()), 4)
    return out


# ----------------------------------------------------------------------------- data
def stream_batches(n: int, batch: int, steps: int, gen: torch.Generator) -> list[list[int]]:
    """Our drop_remainder=False stream: per-epoch permutations, concatenated, cut into `steps`
    full batches (a batch may straddle two epochs)."""
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(steps * batch / n))]
    flat = torch.cat(perms)[:steps * batch]
    return flat.view(steps, batch).tolist()


def train_transform(scale: tuple[float, float]):
    from torchvision import transforms as T   # after _import_torchvision_python_only
    return T.Compose([
        T.RandomResizedCrop(28, scale=tuple(scale), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(), T.Normalize(MNIST_MEAN, MNIST_STD)])


# ----------------------------------------------------------------------------- main
def write_final(final: dict, out: str) -> None:
    """Prints `final: {json}` and appends the JSON line to `out` ('' = print only)."""
    line = json.dumps(final)
    print("final: " + line, flush=True)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    official = import_official(args.mae_repo)
    torch.manual_seed(args.seed)   # as main_pretrain (rank 0)
    np.random.seed(args.seed)

    train_set = Mnist5kPIL("train", train_transform(args.crop_scale))
    n = len(train_set)
    steps_per_epoch = n / args.batch                       # 31.25: ours, no drop_remainder
    total_steps = round(args.epochs * steps_per_epoch)     # durations.total_steps
    bounds = [round(e * total_steps / args.epochs) for e in range(args.epochs + 1)]
    batches = stream_batches(n, args.batch, total_steps,
                             torch.Generator().manual_seed(args.seed))
    memory = torch.utils.data.DataLoader(Mnist5kPIL("train", eval_transform()), batch_size=500)
    queries = torch.utils.data.DataLoader(Mnist5kPIL("test", eval_transform()), batch_size=500)

    model = build_model(official)
    n_enc = sum(p.numel() for k, p in model.named_parameters()
                if p.requires_grad and not k.startswith(("decoder", "mask_token")))
    n_all = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"MaskedAutoencoderViT: {n_all / 1e6:.3f}M trainable params ({n_enc / 1e6:.3f}M encoder)")
    groups = official.timm_optim.param_groups_weight_decay(model, args.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "GradScaler ... CUDA is not available. Disabling."
        loss_scaler = official.misc.NativeScalerWithGradNormCount()
    # the names train_one_epoch / lr_sched.adjust_learning_rate read from main_pretrain's args
    train_args = argparse.Namespace(
        accum_iter=1, mask_ratio=args.mask_ratio, lr=args.lr, min_lr=args.min_lr,
        epochs=args.epochs, warmup_epochs=args.warmup_steps / steps_per_epoch)
    print(f"{n} train digits, {total_steps} steps of {args.batch} ({steps_per_epoch} per epoch), "
          f"warmup_epochs {train_args.warmup_epochs:.4f}, lr {args.lr}, wd {args.weight_decay}")

    final: dict = {}
    start = time.time()
    for epoch in range(args.epochs):
        t0 = time.time()
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches[bounds[epoch]:
                                                                              bounds[epoch + 1]],
                                             num_workers=args.workers)
        with _cpu_shims():
            stats = official.engine.train_one_epoch(model, loader, optimizer, torch.device("cpu"),
                                                    epoch, loss_scaler, log_writer=None,
                                                    args=train_args)
        rec = {"epoch": epoch + 1, "steps": len(loader), "loss": round(stats["loss"], 5),
               "lr_mean": stats["lr"], "epoch_time_s": round(time.time() - t0, 1)}
        last = epoch + 1 == args.epochs
        if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            rec.update(knn_eval(model, memory, queries))
            final = {k: v for k, v in rec.items() if k.startswith("knn_")}
        rec["wall_time_s"] = round(time.time() - start, 1)
        print(json.dumps(rec), flush=True)
    final = {"run": "official_mae", "epochs": args.epochs, "steps": total_steps,
             "final_loss": rec["loss"], **final, "wall_time_s": round(time.time() - start, 1),
             "threads": args.threads, "seed": args.seed}
    write_final(final, args.out)
    return final


if __name__ == "__main__":
    main()
