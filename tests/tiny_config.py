"""A tiny supervised run on the embedded `digits` data (8x8), for tests: a few seconds a run.

python -m vit_jax.main --config tests/tiny_config.py --workdir /tmp/tiny
"""
from vit_jax import objectives
from vit_jax.config_base import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.data.name = "digits"
    c.data.train_transform = "random_crop_with_padding(8, 1)|normalize('none')"
    c.data.eval_transform = "normalize('none')"
    c.data.workers = 2
    c.model_name = "vit_tiny_patch2_8"
    c.model = dict(width=16, depth=2, num_heads=2, mlp_dim=32)
    c.batch_size = 16
    c.eval_batch_size = 64
    c.total_steps = 12
    c.supervised = objectives.default_config("supervised")
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint_every = 4
    c.tensorboard = False
    c.progress = False
    c.async_checkpoints = False
    return c


def epochs_config():
    """The tiny run with its length in epochs (0.1375 * 1397 / 16 -> 12 steps): the shared
    `finished_run` fixture of tests/conftest.py was trained with it."""
    c = get_config()
    c.total_steps, c.num_epochs = -1, 0.1375
    return c
