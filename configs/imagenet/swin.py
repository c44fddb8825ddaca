"""Swin supervised on ImageNet-1k, the paper's recipe (Liu et al. 2021, microsoft/Swin-Transformer).

    python -m vit_jax.main --config configs/imagenet/swin.py:tiny --workdir DIR \
        --config.data.data_dir=/path/to/tfds --multihost

ARG: tiny | small | base (window 7, 224). Batch 1024, AdamW lr 1e-3, weight decay 0.05 (not on
the relative-position tables, norms and biases), 300 epochs with 20 warmup, cosine to 1e-5,
gradient clipping 5.0, drop path 0.2 / 0.3 / 0.5, RandAugment(9, 0.5), mixup 0.8, cutmix 1.0,
label smoothing 0.1. (Random erasing 0.25 is not implemented yet.) Published: 81.2 / 83.2 / 83.5.
Not run here (no ImageNet offline).
"""
from vit_jax import objectives
from vit_jax.config_base import imagenet_config

RECIPES = {"tiny": ("swin_tiny_patch4_window7_224", 0.2), "small": ("swin_small_patch4_window7_224", 0.3),
           "base": ("swin_base_patch4_window7_224", 0.5)}

def get_config(arg: str = "tiny"):
    model, drop_path = RECIPES[arg or "tiny"]
    c = imagenet_config()
    c.model_name = model
    c.model = dict(drop_path_rate=drop_path)
    c.data.train_transform = "rrc(224)|flip|randaug(2, 9, 0.5)|normalize('imagenet')"
    c.batch_size = 1024
    c.num_epochs = 300
    c.optim.lr = 1e-3
    c.optim.end_lr = 1e-5
    c.optim.weight_decay = 0.05
    c.optim.clip_norm = 5.0
    c.optim.warmup_epochs = 20
    c.supervised = objectives.default_config("supervised")
    c.supervised.update(dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0))
    return c
