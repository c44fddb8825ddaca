"""Transformers from scratch on mnist5k at the CNN's budget: CCT and the paper's ViT-Lite baselines.

    python -m vit_jax.main --config configs/mnist5k/cct.py --workdir workdirs/mnist5k_cct
    python -m vit_jax.main --config configs/mnist5k/cct.py:vit_lite,aug=affine --workdir workdirs/mnist5k_vit_lite_affine
    python -m vit_jax.main --config configs/mnist5k/cct.py:vit,aug=affine --workdir workdirs/mnist5k_vit_cct_recipe
    python -m vit_jax.main --config configs/mnist5k/cct.py:cct,seed=1 --workdir workdirs/mnist5k_cct_s1
    python -m vit_jax.main --config configs/mnist5k/cct.py:cct_3x2 --workdir workdirs/mnist5k_cct_3x2

ARG = MODEL[,seed=N][,aug=affine15|affine|shift]: MODEL "cct" (CCT-4/3x3: three 3x3 conv +
max-pool stages, 28 -> 14 -> 7 -> 4 px, 16 tokens, 4 layers of width 128, SeqPool: 0.51M
parameters), "cct_3x2" (CCT-4/3x2, the previous shipped model: two conv + max-pool stages, 49
tokens, 0.48M), "vit_lite" (the same encoder on 4x4 patches with a class token: ViT-Lite-4/4,
0.41M), "vit_lite_seqpool" (ViT-Lite with SeqPool: the paper's CVT-4/4, 0.41M) or "vit" (the
shared small-data ViT: 4x4 patches, width 128, depth 6, 0.8M).
Why this size (XLA's cost analysis of the train step per 28-px training image,
`python -m vit_jax.bench --model cct_4_3x3_28 --batch 128 --aot --devices 0`, gflop_per_device / 128):
CCT-7/3x1 keeps 196 tokens of width 256, 5.3 GFLOP; CCT-4/3x2 0.22; CCT-4/3x3 0.11, with the
CNN anchor's three downsampling stages in its tokenizer. On the 2-core CPU only the CCT-2/4 class
fits the 10-minute budget of the CNN anchor, and the third conv stage is what lifts CCT to the
CNN: 99.13 against 98.80 for CCT-4/3x2 on the same recipe, in half the time.
The recipe (CCT's, shortened, with a higher lr for the short schedule): AdamW lr 2e-3, weight
decay 0.06, batch 128, 2 warm-up epochs then cosine, 30 epochs, label smoothing 0.1, random affine
warps of +-15 degrees, +-10% shifts, scale 0.85-1.15 and shear 10 (config_base.MNIST5K_AUGS
"affine15"; aug=affine: the milder +-10 degrees, scale 0.9-1.1, no shear; aug=shift: random 2-px
shifts); the same for every MODEL.
Measured on the 2-core CPU (README's "Small data from scratch" table): CCT-4/3x3 99.13 +- 0.12
over seeds 0, 1, 2 (99.2, 99.0, 99.2), 3 min 55 s alone; the CNN anchor (configs/mnist5k/resnet.py)
99.00 +- 0.20, 99.1 on affine15 (seed 0). The bar (CCT >= 99.2 in 10 minutes) is not reached by
the mean; --config.model.depth=6 gives 99.17 +- 0.06 (99.1, 99.2, 99.2) in about twice the time. CCT-4/3x2 (cct_3x2): 98.80 +- 0.20 (98.8, 99.0, 98.6); with aug=affine 98.60 +- 0.10.
The seeds' ordering at equal budget (aug=affine, CCT-4/3x2): CCT 98.60 > ViT-Lite 94.60 +- 0.36 >
plain ViT 93.80 +- 0.56.
"""
from vit_jax import objectives
from vit_jax.config_base import MNIST5K_AUGS, MNIST5K_MODEL, mnist5k_config, parse_config_arg

MODELS = {"cct": "cct_4_3x3_28", "cct_3x2": "cct_4_3x2_28", "vit_lite": "vit_lite_4_4_28",
          "vit_lite_seqpool": "vit_lite_seqpool_4_4_28", "vit": "vit_tiny_patch4_28"}


def get_config(arg: str = "cct"):
    a = parse_config_arg(arg, model=("cct", tuple(MODELS)), seed=(0, ()),
                         aug=("affine15", tuple(MNIST5K_AUGS)))
    c = mnist5k_config()
    c.seed = a["seed"]
    c.model_name = MODELS[a["model"]]
    # the CCTs' registry values, written out so that --config.model.depth=... can change them
    c.model = (dict(MNIST5K_MODEL) if a["model"] == "vit" else
               dict(depth=4, conv_channels=64) if a["model"].startswith("cct") else dict())
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
