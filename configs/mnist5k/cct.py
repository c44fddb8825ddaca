"""Transformers from scratch on mnist5k at the CNN's budget: CCT and the paper's ViT-Lite baselines.

    python -m vit_jax.main --config configs/mnist5k/cct.py --workdir workdirs/mnist5k_cct
    python -m vit_jax.main --config configs/mnist5k/cct.py:vit_lite --workdir workdirs/mnist5k_vit_lite_affine
    python -m vit_jax.main --config configs/mnist5k/cct.py:vit --workdir workdirs/mnist5k_vit_cct_recipe
    python -m vit_jax.main --config configs/mnist5k/cct.py:cct,seed=1 --workdir workdirs/mnist5k_cct_s1

ARG = MODEL[,seed=N][,aug=affine|shift]: MODEL "cct" (CCT-4/3x2: two 3x3 conv + max-pool stages,
28 -> 14 -> 7 px, 49 tokens, 4 layers of width 128, SeqPool: 0.48M parameters, CCT-2's width at
twice its depth), "vit_lite" (the same encoder on 4x4 patches with a class token: ViT-Lite-4/4,
0.41M), "vit_lite_seqpool" (ViT-Lite with SeqPool: the paper's CVT-4/4, 0.41M) or "vit" (the
shared small-data ViT: 4x4 patches, width 128, depth 6, 0.8M). Why this size: CCT-7/3x1 at 28 px
keeps 196 tokens of width 256 (about 4 GFLOP per training image), 10x a CCT-2-sized model; on the
2-core CPU only the CCT-2/4 class fits the 10-minute budget of the CNN anchor.
The recipe (CCT's, shortened, with a higher lr for the short schedule): AdamW lr 2e-3, weight
decay 0.06, batch 128, 2 warm-up epochs then cosine, 30 epochs, label smoothing 0.1, random affine
warps (config_base.MNIST5K_AUGS; aug=shift: random 2-px shifts); the same for every MODEL.
Measured on the 2-core CPU (README's "Small data from scratch" table): CCT 98.60 +- 0.10 over
seeds 0, 1, 2 (98.5, 98.7, 98.6), 8 min 33 s alone (14-15 min beside another run);
ViT-Lite 94.60 +- 0.36, plain ViT 93.80 +- 0.56 (the same seeds); the CNN anchor (configs/mnist5k/resnet.py) 99.00 +- 0.20. The bar
(CCT >= 99.2 in 10 minutes) is not reached. aug=shift: CCT 98.4.
"""
from vit_jax import objectives
from vit_jax.config_base import MNIST5K_AUGS, MNIST5K_MODEL, mnist5k_config, parse_config_arg

MODELS = {"cct": "cct_4_3x2_28", "vit_lite": "vit_lite_4_4_28",
          "vit_lite_seqpool": "vit_lite_seqpool_4_4_28", "vit": "vit_tiny_patch4_28"}


def get_config(arg: str = "cct"):
    a = parse_config_arg(arg, model=("cct", tuple(MODELS)), seed=(0, ()),
                         aug=("affine", tuple(MNIST5K_AUGS)))
    c = mnist5k_config()
    c.seed = a["seed"]
    c.model_name = MODELS[a["model"]]
    c.model = dict(MNIST5K_MODEL) if a["model"] == "vit" else dict()
    c.data.train_transform = MNIST5K_AUGS[a["aug"]]
    c.data.eval_transform = "normalize('mnist')"
    c.batch_size = 128
    c.num_epochs = 30
    c.optim.lr = 2e-3
    c.optim.warmup_epochs = 2
    c.optim.weight_decay = 0.06
    c.supervised = objectives.default_config("supervised")
    c.supervised.label_smoothing = 0.1
    c.log_every = 50
    c.eval_every_epochs = 5
    c.checkpoint_every_epochs = 30
    return c
