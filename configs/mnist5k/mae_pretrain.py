"""MAE pre-training on mnist5k (4,000 train digits), the small-data recipe.

    python -m vit_jax.main --config configs/mnist5k/mae_pretrain.py --workdir workdirs/mnist5k_mae

Encoder: the shared small-data ViT (4x4 patches, 49 tokens, width 128, depth 6); decoder width 64,
depth 2; 75% masking; norm_pix_loss; crops (0.5, 1) as MAE's RandomResizedCrop, no flips
(digits are not mirror-symmetric). Results: README's small-data table.
"""
from vit_jax.config_base import mnist5k_config
from vit_jax import objectives


def get_config(arg: str = ""):
    del arg
    c = mnist5k_config()
    c.objective = "mae"
    c.mae = objectives.default_config("mae")
    c.mae.update(dict(mask_ratio=0.75, decoder_width=64, decoder_depth=2, decoder_heads=4,
                      norm_pix_loss=True))
    c.data.train_transform = "rrc(28, scale=(0.5, 1.0))|normalize('mnist')"
    c.num_epochs = 20
    c.optim.lr = 1e-3  # MAE: 1.5e-4 * batch / 256 for 800 epochs; a 20-epoch run wants more
    c.optim.b2 = 0.95
    c.optim.warmup_steps = 60
    c.optim.clip_norm = 0.0
    c.log_every = 100
    c.eval_every_epochs = 10
    c.checkpoint_every_epochs = 10
    c.evals.mae_reconstruction = dict(type="reconstruction")   # mae_reconstruction_<step>.png
    return c
