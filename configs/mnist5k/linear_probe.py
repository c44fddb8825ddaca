"""Linear probe on mnist5k: frozen backbone of ARG (or a random one without ARG), BatchNorm + linear.

    python -m vit_jax.main --config configs/mnist5k/linear_probe.py:workdirs/mnist5k_mae --workdir workdirs/mnist5k_mae_probe
    python -m vit_jax.main --config configs/mnist5k/linear_probe.py --workdir workdirs/mnist5k_random_probe

MAE's protocol (class token, LARS momentum 0.9, trust 0.001, no weight decay), 10 epochs,
lr 0.1 * batch / 256 * 4. Results: README's small-data table.
"""
from vit_jax.config_base import mnist5k_config


def get_config(arg: str = ""):
    c = mnist5k_config()
    c.objective = "linear_probe"
    c.init_from = arg
    c.data.train_transform = "pad_crop(28, 2)|normalize('mnist')"
    c.num_epochs = 10
    c.optim.name = "lars"
    c.optim.lr = 0.1 * c.batch_size / 256 * 4
    c.optim.b1 = 0.9
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 0.0
    c.optim.warmup_steps = 30
    c.log_every = 100
    c.eval_every = 313
    c.checkpoint_every = 313
    return c
