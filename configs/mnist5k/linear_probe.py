"""Linear probe on mnist5k: frozen backbone of ARG (or a random one without ARG), BatchNorm + linear.

    python -m vit_jax.main --config configs/mnist5k/linear_probe.py:workdirs/mnist5k_mae --workdir workdirs/mnist5k_mae_probe
    python -m vit_jax.main --config configs/mnist5k/linear_probe.py --workdir workdirs/mnist5k_random_probe

MAE's protocol (class token, LARS momentum 0.9, trust 0.001, no weight decay), 20 epochs, with
MAE's absolute lr 6.4 (0.1 * 16384 / 256): LARS scales each step by trust * |w| / |g|, so the
linear batch-scaling rule does not carry over to a batch of 128 (lr 0.2 barely moved the head:
33.5% after 10 epochs). ARG = WORKDIR,gap probes the mean of the final-norm patch tokens instead
of the class token. Results: README's small-data table.
"""
from vit_jax.config_base import backbone_of_run, mnist5k_config


def get_config(arg: str = ""):
    workdir, _, pool = (arg or "").partition(",")
    c = mnist5k_config()
    c.objective = "linear_probe"
    backbone_of_run(c, workdir)  # the run's own backbone (ViT, Swin, CvT) and its weights
    if pool:  # ARG = WORKDIR,gap: the mean of the final-norm patch tokens instead of the class token
        if pool != "gap":
            raise ValueError(f"ARG {arg!r}: use WORKDIR or WORKDIR,gap")
        c.model.pool, c.model.fc_norm = "gap", False
    c.data.train_transform = "pad_crop(28, 2)|normalize('mnist')"
    c.num_epochs = 20
    c.optim.name = "lars"
    c.optim.lr = 6.4
    c.optim.b1 = 0.9
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 0.0
    c.optim.warmup_steps = 30
    c.optim.freeze = "backbone/"   # only the head learns
    c.log_every = 100
    c.eval_every_epochs = 20
    c.checkpoint_every_epochs = 20
    return c
