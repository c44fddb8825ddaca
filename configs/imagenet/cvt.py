"""CvT supervised on ImageNet-1k, the paper's recipe (Wu et al. 2021, microsoft/CvT).

    python -m vit_jax.main --config configs/imagenet/cvt.py:13 --workdir DIR \
        --config.data.data_dir=/path/to/tfds --multihost

ARG: 13 | 21. Batch 2048, AdamW with initial lr 0.02 (as the paper states for batch 2048),
weight decay 0.05 (CvT-13) / 0.1 (CvT-21), 300 epochs, cosine, RandAugment(9, 0.5), mixup 0.8,
cutmix 1.0, label smoothing 0.1, drop path 0.1 in the last stage. (Random erasing 0.25 is not
implemented yet.) Published: 81.6 / 82.5 top-1 at 224. Not run here (no ImageNet offline).
"""
from vit_jax import objectives
from vit_jax.config_base import imagenet_config

RECIPES = {"13": ("cvt_13_224", 0.05), "21": ("cvt_21_224", 0.1)}

def get_config(arg: str = "13"):
    model, weight_decay = RECIPES[arg or "13"]
    c = imagenet_config()
    c.model_name = model
    c.model = dict(drop_path_rate=(0.0, 0.0, 0.1))
    c.data.train_transform = "rrc(224)|flip|randaug(2, 9, 0.5)|normalize('imagenet')"
    c.batch_size = 2048
    c.num_epochs = 300
    c.optim.lr = 0.02
    c.optim.weight_decay = weight_decay
    c.optim.warmup_epochs = 5
    c.supervised = objectives.default_config("supervised")
    c.supervised.update(dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0))
    return c
