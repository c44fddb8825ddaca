"""Swin trained from scratch on mnist5k, with the ViT-from-scratch recipe of configs/mnist5k/finetune.py.

    python -m vit_jax.main --config configs/mnist5k/swin.py --workdir workdirs/mnist5k_swin

Swin for 28x28 digits: 2x2 patches (14x14 tokens), window 7, embed 48, two stages (2, 2 blocks;
3, 6 heads; the second at 7x7 after patch merging). 15 epochs, AdamW, label smoothing 0.1,
drop path 0.1. Results: README's results table.
"""
from vit_jax import objectives
from vit_jax.config_base import mnist5k_config


def get_config(arg: str = ""):
    del arg
    c = mnist5k_config()
    c.model_name = "swin_tiny_patch4_window7_224"
    c.model = dict(patch_size=2, width=48, depths=(2, 2), num_heads=(3, 6), window_size=7,
                   image_size=28, drop_path_rate=0.1)
    c.num_epochs = 15
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 60
    c.optim.weight_decay = 0.05
    c.supervised = objectives.default_config("supervised")
    c.supervised.label_smoothing = 0.1
    c.log_every = 100
    c.eval_every_epochs = 7.5
    c.checkpoint_every_epochs = 15
    return c
