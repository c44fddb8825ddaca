"""Quickstart: a small ViT trained from scratch on mnist5k (4,000 train / 1,000 test digits).

    python -m vit_jax.main --config configs/quickstart.py --workdir workdirs/quickstart

ViT with 7x7 patches (16 tokens + class token), width 128, depth 6, 4 heads: 0.8M parameters.
Random 2-pixel shifts, label smoothing 0.1, AdamW with warmup + cosine, 30 epochs.
Measured on the 2-core CPU machine: see the README's results table (accuracy and wall time).
"""
from vit_jax import objectives
from vit_jax.config_base import base_config


def get_config(arg: str = ""):
    del arg
    c = base_config()
    c.data.name = "mnist5k"
    c.data.train_transform = "pad_crop(28, 2)|normalize('mnist')"
    c.data.eval_transform = "normalize('mnist')"
    c.data.workers = 2
    c.model_name = "vit_tiny_patch7_28"
    c.model = dict(width=128, depth=6, num_heads=4, mlp_dim=256, pool="gap")
    c.batch_size = 64
    c.eval_batch_size = 512
    c.num_epochs = 30
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.05
    c.supervised = objectives.default_config("supervised")
    c.supervised.label_smoothing = 0.1
    c.log_every = 100
    c.eval_every_epochs = 10
    c.checkpoint_every_epochs = 10
    return c
