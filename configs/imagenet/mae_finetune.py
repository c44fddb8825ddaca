"""Fine-tuning an MAE encoder on ImageNet-1k, the paper's recipe.

    python -m vit_jax.main --config configs/imagenet/mae_finetune.py:base,PRETRAIN_WORKDIR \
        --workdir DIR --config.data.data_dir=/path/to/tfds

ARG: "SIZE,WORKDIR" with SIZE base | large | huge. Batch 1024, lr 5e-4 * 1024 / 256, AdamW
(0.9, 0.999), wd 0.05, layer decay 0.65 / 0.75 / 0.75, drop path 0.1 / 0.2 / 0.3, 100 / 50 / 50
epochs with 5 warmup, RandAugment(9, 0.5), mixup 0.8, cutmix 1.0, label smoothing 0.1, global
average pooling + fc_norm, head init std 2e-5. MAE also uses random erasing 0.25, which vit_jax
does not implement yet. Published: 83.6 / 85.9 / 86.9 top-1.
"""
from vit_jax import objectives
from vit_jax.config_base import imagenet_config

RECIPES = {  # model, layer decay, drop path, epochs
    "base": ("vit_base_patch16_224", 0.65, 0.1, 100),
    "large": ("vit_large_patch16_224", 0.75, 0.2, 50),
    "huge": ("vit_huge_patch14_224", 0.75, 0.3, 50),
}

def get_config(arg: str = "base,"):
    size, _, init_from = (arg or "base,").partition(",")
    model, layer_decay, drop_path, epochs = RECIPES[size]
    c = imagenet_config()
    c.model_name = model
    c.init_from = init_from
    c.model.update(dict(pool="gap", drop_path_rate=drop_path, head_init_std=2e-5))
    c.data.train_transform = "rrc(224)|flip|randaug(2, 9, 0.5)|normalize('imagenet')"
    c.batch_size = 1024
    c.num_epochs = epochs
    c.optim.lr = 5e-4 * c.batch_size / 256
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = layer_decay
    c.optim.clip_norm = 0.0
    c.optim.warmup_epochs = 5
    c.supervised = objectives.default_config("supervised")
    c.supervised.update(dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0))
    return c
