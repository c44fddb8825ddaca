"""CvT trained from scratch on mnist5k, with the ViT-from-scratch recipe of configs/mnist5k/finetune.py.

    python -m vit_jax.main --config configs/mnist5k/cvt.py --workdir workdirs/mnist5k_cvt

CvT for 28x28 digits: three stages of 3x3 stride-2 token embeddings (14x14, 7x7, 4x4 tokens),
widths 32/64/128, depths 1/1/2, heads 1/2/4, class token in the last stage. 15 epochs, AdamW,
label smoothing 0.1, drop path 0.1. Results: README's results table.
"""
from vit_jax import objectives
from vit_jax.config_base import mnist5k_config


def get_config(arg: str = ""):
    del arg
    c = mnist5k_config()
    c.model_name = "cvt_13_224"
    c.model = dict(widths=(32, 64, 128), depths=(1, 1, 2), num_heads=(1, 2, 4), patch_sizes=(3, 3, 3),
                   patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1), image_size=28,
                   drop_path_rate=(0.0, 0.0, 0.1))
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
