"""Linear probe of an MAE encoder on ImageNet-1k, the paper's recipe.

    python -m vit_jax.main --config configs/imagenet/mae_linear_probe.py:base,PRETRAIN_WORKDIR \
        --workdir DIR --config.data.data_dir=/path/to/tfds

ARG: "SIZE,WORKDIR". Class token, BatchNorm(affine=False) + linear head (std 0.01), LARS
(momentum 0.9, trust 0.001), batch 16384, lr 0.1 * 16384 / 256, no weight decay, 90 epochs
with 10 warmup, RandomResizedCrop + flip. Published: 68.0 / 75.8 / 76.6 (B / L / H).
"""
from vit_jax.config_base import imagenet_config

MODELS = {"base": "vit_base_patch16_224", "large": "vit_large_patch16_224", "huge": "vit_huge_patch14_224"}

def get_config(arg: str = "base,"):
    size, _, init_from = (arg or "base,").partition(",")
    c = imagenet_config()
    c.objective = "linear_probe"
    c.model_name = MODELS[size]
    c.init_from = init_from
    c.batch_size = 16384
    c.num_epochs = 90
    c.optim.name = "lars"
    c.optim.lr = 0.1 * c.batch_size / 256
    c.optim.b1 = 0.9
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 0.0
    c.optim.freeze = "backbone/"   # only the head learns
    c.optim.warmup_epochs = 10
    return c
