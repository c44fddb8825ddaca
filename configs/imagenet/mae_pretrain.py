"""MAE pre-training on ImageNet-1k, the paper's recipe (He et al. 2021, facebookresearch/mae).

    python -m vit_jax.main --config configs/imagenet/mae_pretrain.py:base --workdir gs://.../mae_b \
        --config.data.data_dir=/path/to/tfds --multihost

ARG: base | large | huge (ViT-B/16, L/16, H/14). Batch 4096, lr 1.5e-4 * 4096 / 256, AdamW
(0.9, 0.95), weight decay 0.05, 40 warmup epochs, cosine, 800 epochs (the paper's best: 1600),
RandomResizedCrop(0.2, 1) + flip only, 75% masking, decoder 512 wide x 8 deep, norm_pix_loss.
Published after fine-tuning: 83.6 / 85.9 / 86.9 top-1 (B / L / H). Not run here (no ImageNet offline).
"""
from vit_jax import objectives
from vit_jax.config_base import imagenet_config

MODELS = {"base": "vit_base_patch16_224", "large": "vit_large_patch16_224", "huge": "vit_huge_patch14_224"}

def get_config(arg: str = "base"):
    c = imagenet_config()
    c.objective = "mae"
    c.model_name = MODELS[arg or "base"]
    c.mae = objectives.default_config("mae")
    c.mae.update(dict(mask_ratio=0.75, decoder_width=512, decoder_depth=8, decoder_heads=16,
                      norm_pix_loss=True))
    c.data.train_transform = "rrc(224, scale=(0.2, 1.0))|flip|normalize('imagenet')"
    c.batch_size = 4096
    c.num_epochs = 800
    c.optim.lr = 1.5e-4 * c.batch_size / 256
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.05
    c.optim.clip_norm = 0.0
    c.optim.warmup_epochs = 40
    c.mesh.fsdp = 1
    c.evals.mae_reconstruction = dict(type="reconstruction")
    return c
