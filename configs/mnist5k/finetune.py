"""Supervised training on mnist5k, from scratch or from a pre-trained backbone (fine-tuning).

    python -m vit_jax.main --config configs/mnist5k/finetune.py --workdir workdirs/mnist5k_scratch
    python -m vit_jax.main --config configs/mnist5k/finetune.py:workdirs/mnist5k_mae --workdir workdirs/mnist5k_mae_ft

ARG is the workdir of a pre-training run (any method): its backbone is loaded and fine-tuned
with MAE's recipe scaled down: global average pooling + fc_norm, layer-wise lr decay 0.75,
drop path 0.1, label smoothing 0.1. From scratch (no ARG) the same recipe runs without layer
decay. Both get the same budget: 15 epochs. Results: README's small-data table.
"""
from vit_jax import objectives
from vit_jax.config_base import mnist5k_config


def get_config(arg: str = ""):
    c = mnist5k_config()
    c.init_from = arg
    c.model.update(dict(pool="gap", drop_path_rate=0.1, head_init_std=2e-5))
    c.num_epochs = 15
    c.optim.lr = 1e-3
    c.optim.b2 = 0.999
    c.optim.warmup_steps = 60
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.75 if arg else 1.0
    c.supervised = objectives.default_config("supervised")
    c.supervised.label_smoothing = 0.1
    c.log_every = 100
    c.eval_every_epochs = 7.5
    c.checkpoint_every_epochs = 15
    return c
