"""EsViT / DINO self-distillation on mnist5k (4,000 train digits), the small-data recipes.

    python -m vit_jax.main --config configs/mnist5k/esvit.py:v,vit --workdir workdirs/mnist5k_dino
    python -m vit_jax.main --config configs/mnist5k/esvit.py:vr,vit --workdir workdirs/mnist5k_esvit_vr_vit
    python -m vit_jax.main --config configs/mnist5k/esvit.py:v,vit,faithful --workdir workdirs/mnist5k_dino_faithful

ARG = LOSS,BACKBONE[,RECIPE]: LOSS "vr" (view + region, EsViT) or "v" (view only, i.e. DINO);
BACKBONE "vit" (the shared small-data ViT, 4x4 patches, the network of the MAE and EVA rows) or
"swin" (EsViT's choice: the mnist5k Swin, 2x2 patches, window 7, embed 48, depths 2-2); RECIPE
"remedies" (the default) or "faithful".

faithful: DINO / EsViT as their official code runs them, at this size. Crops 2 x 28 px at scale
(0.4, 1) + 6 x 12 px at (0.05, 0.4) with DINO's jitter / blur / solarisation (no flips: digits are
not mirror-symmetric). Heads: 1024 prototypes (hidden 512, bottleneck 128). 20 epochs of
floor(4000 / 128) = 31 steps (DINO's loader drops the last partial batch: data.drop_remainder),
AdamW lr 1e-3 (batch 128) with 2 warm-up epochs, weight decay cosine 0.04 -> 0.4 on all but biases
and 1-D tensors (DINO's groups), per-parameter clipping 3.0, last layers held by the optimizer in
epoch 0 (as torch's AdamW skips a parameter without gradient), the ViT initialised as DINO's
(trunc-normal 0.02, torch's patch conv) and its position embedding resized for the 12-px crops with
DINO's bicubic (+0.1 offset). Teacher: temperature 0.02 and EMA 0.99 -> 1, not the papers' 0.04 ->
0.07 and 0.996 (with those the teacher is uniform from the start: view loss ln 1024 throughout).
Measured: it does not learn, in our code or the official one: in 8 epochs the view loss rises to
ln 1024 and the teacher's k-NN (k=10) ends at the random floor, 37.0% (the official
facebookresearch/dino code on the same recipe and steps: 36.6%); EsViT (vr) 37.7%.

remedies (the default): the faithful recipe plus REMEDIES below, none of them in the papers
(README's small-data table names each): Sinkhorn-Knopp teacher targets and KoLeo 0.1 (DINOv2), 4
local crops of 16 px at (0.2, 0.5), global crops at (0.8, 1), no solarisation, teacher EMA 0.95 -> 1
(not 0.99), and for the ViT xavier init with the position embedding at std 2
(model.posemb_init_std; timm's and DINO's 0.02 leave a random class token blind to where the
strokes are).
Measured (`esvit.py:v,vit --config.eval_every_epochs=2`, 42 min 49 s on the 2-core CPU beside one
or two other runs; seed 1 below ran alone): teacher k-NN (k=10 / 20)
94.2 / 93.7 after 20 epochs (89.4 after 2, 93.7 after 10, 94.2 from 14 on; student 93.6 / 93.9);
--config.seed=1: 94.7 / 94.7 (95.0 after 10; student 95.2), 17 min 52 s alone;
--config.seed=2: 94.2 / 94.0. Three seeds 94.37 +- 0.29, below the raw pixels' 95.1: the bar (95)
is not reached in 20 epochs. The official facebookresearch/dino code on this recipe and budget
(benchmarks/official_dino_mnist5k.py with the remedy flags and --momentum_teacher 0.95, seeds 0-2):
95.3, 94.3, 94.7 (94.77 +- 0.50), the same within seed noise. --config.num_epochs=40: 95.0 / 95.1
(95.0 from epoch 20 on), with --config.seed=1 95.4 / 95.8: the budget at which ours reaches the
bar (32 min 37 s alone). EsViT (vr,vit) on this recipe, seeds 0-2: 93.5, 94.7, 93.8 (94.00 +- 0.62),
not above DINO; the official microsoft/esvit code on it (benchmarks/official_esvit_mnist5k.py, seeds
0-2): 93.8, 93.7, 93.2 against its DINO's 95.3, 94.3, 94.7, so V+R >= V fails on the ViT in the
reference too; with --config.esvit.region_min_std=0.1: 92.9 / 92.7. DINO's blur at the digits'
pixel size (--config.esvit.blur_sigma="(0.8, 16.0)"): 93.3 / 93.2. EMA 0.9: 93.8 / 94.0 (student 94.3); 0.98 and 0.8 start between (README).
Everything below was measured with the earlier EMA 0.99 (add --config.esvit.momentum_teacher=0.99
to reproduce it): 93.4 / 93.4 after 20 epochs
(83.3 after one, 90.3 after 5, 92.1 after 10, 93.3 after 15; student 93.0 / 92.9;
--config.seed=1: 93.8 / 94.0, 18 min 40 s alone)
(40 epochs give 94.0 / 93.8, flat from epoch 25; batch 64 at lr 5e-4,
twice the steps, 93.8 / 93.7; iBOT's masked patch target, esvit.mim_weight=1, behind at epoch 6;
the teacher at temperature 0.01, 93.4 / 92.9; the position embedding at std 4, behind at epoch 10;
global crops at (0.9, 1), 93.1 / 92.9; KoLeo 0.3, 92.6 / 92.2; the head's last layer not
weight-normalised, 93.5 / 93.3; no stochastic depth, 92.3 / 92.7; no jitter or blur, 90.6 at epoch 10;
stroke-width jitter, esvit.morph_p=0.5 with morph_strength=(0, 1), 92.8 / 93.1, student 94.3 / 93.6;
stochastic depth 0.2, 93.3 / 92.7; 4096 prototypes, 92.5 / 92.2; lr 2e-3, 92.6 / 92.6). Global crops at
(0.4, 1) give 89.9 / 89.7; the position embedding at
0.02 as well gives 53.7 / 55.0. The official facebookresearch/dino code on this recipe and budget
(benchmarks/official_dino_mnist5k.py with the remedy flags): 92.0 / 92.0. EsViT (vr,vit) on this
recipe: 91.2 / 91.8, below DINO (the paper's ordering V+R >= V is not reproduced on the ViT); with
the region term on content tokens only (--config.esvit.region_min_std=0.1, not EsViT's) 92.8 / 93.2,
student 93.5 / 93.6 (DINO's student: 93.0 / 92.9).
Swin, the same recipe and 20 epochs: `vr,swin` 49.9 / 51.4 against `v,swin` 43.2 / 45.7 (V+R above
V, the paper's ordering; above the random-init Swin's 23.7 / 23.5, far below the pixels: the ViT's
position-embedding remedy has no Swin counterpart).
Every run logs the teacher's k-NN (eval/knn/top1_k*), the student's (eval/knn_student/top1_k*) and
the share of the teacher's top-10 correspondences on ink (eval/esvit_correspondence/ink_top10, 100
test digits), with the collapse diagnostics (train/view/*) at every log step. Then, on the EMA
teacher's backbone:
    python -m vit_jax.main --config configs/mnist5k/linear_probe.py:workdirs/mnist5k_dino --workdir workdirs/mnist5k_dino_probe
    python -m vit_jax.main --config configs/mnist5k/knn.py:workdirs/mnist5k_dino --workdir workdirs/mnist5k_dino_knn
"""
import ml_collections as mlc

from vit_jax.config_base import MNIST5K_MODEL, mnist5k_config
from vit_jax import objectives

BACKBONES = {
    "swin": ("swin_tiny_patch4_window7_224", dict(patch_size=2, width=48, depths=(2, 2),
                                                  num_heads=(3, 6), window_size=7, image_size=28,
                                                  drop_path_rate=0.1, ape=False, ape_init_std=0.02)),
    # DINO's ViT: its init (trunc-normal 0.02, torch's patch conv) and its resize of the position
    # embedding for the local crops (bicubic, +0.1 scale-factor offset)
    "vit": ("vit_tiny_patch4_28", dict(MNIST5K_MODEL, drop_path_rate=0.1, posemb_interp="bicubic_dino",
                                       weight_init="dino", pool="token", posemb_init_std=0.02)),
}


# Remedies for collapse on 4,000 digits, none of them in the DINO / EsViT papers (README's
# small-data table): Sinkhorn-Knopp teacher targets and KoLeo (DINOv2), 4 local crops of 16 px at
# scale (0.2, 0.5) instead of 6 x 12 px at (0.05, 0.4) (a 5% crop of a digit is mostly background),
# global crops at (0.8, 1) (a centred digit's position is part of its shape once the ViT sees position),
# no solarisation (it erases a white-on-black digit), a teacher EMA of 0.95 (cosine to 1): with
# Sinkhorn-Knopp targets against collapse a slow teacher only delays learning (0.95 passes 0.99's
# 20-epoch k-NN by epoch 10; 0.996 is slower still), and the ViT's xavier init (MAE's; DINO's
# trunc-normal 0.02 starts with class tokens that barely depend on the digit) with a position
# embedding of std 2 at init instead of 0.02: DINO sharpens the teacher's first notion of
# similarity, and with 0.02 that notion is ink (a class token that averages patches; random-init
# k-NN 46), with 2 it is shape (random-init k-NN 85; benchmarks/neighbour_attributes.py).
REMEDIES = dict(sinkhorn_iters=3, koleo_weight=0.1, num_local=4, local_size=16, local_scale=(0.2, 0.5),
                solarize_p=(0.0, 0.0, 0.0), global_scale=(0.8, 1.0), momentum_teacher=0.95)
RECIPES = ("remedies", "faithful")


def get_config(arg: str = "vr,vit"):
    parts = (arg or "vr,vit").split(",")
    loss, backbone = (parts + ["vit"])[:2]
    recipe = parts[2] if len(parts) > 2 else "remedies"
    if len(parts) > 3 or loss not in ("v", "vr") or backbone not in BACKBONES or recipe not in RECIPES:
        raise ValueError(f"ARG {arg!r}: use LOSS,BACKBONE[,RECIPE] with LOSS in v|vr, BACKBONE in "
                         f"{list(BACKBONES)} and RECIPE in {list(RECIPES)} (default remedies).")
    c = mnist5k_config()
    c.objective = "esvit"
    c.model_name, model = BACKBONES[backbone]
    c.model = mlc.ConfigDict(model)
    c.data.train_transform = "normalize('none')"   # the crops are made and normalised by the objective
    c.data.drop_remainder = True    # DINO's loader: 31 steps per epoch of 4,000 at batch 128
    c.esvit = objectives.default_config("esvit")
    c.esvit.update(dict(region=loss == "vr", out_dim=1024, hidden_dim=512, bottleneck_dim=128,
                        global_size=28, local_size=12, num_local=6, global_scale=(0.4, 1.0),
                        local_scale=(0.05, 0.4), flip=False, pixel_stats="mnist",
                        # a 625-step budget: see the docstring for why not 0.04 -> 0.07 and 0.996
                        warmup_teacher_temp=0.02, teacher_temp=0.02, warmup_teacher_temp_epochs=0,
                        momentum_teacher=0.99, freeze_last_layer_epochs=1))
    if recipe == "remedies":
        c.esvit.update(REMEDIES)
        if backbone == "vit":
            c.model.weight_init = "mae"
            c.model.posemb_init_std = 2.0
    c.num_epochs = 20
    c.optim.lr = 1e-3
    c.optim.b2 = 0.999
    c.optim.warmup_epochs = 2
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.clip_norm = 3.0
    c.optim.clip_mode = "per_param"
    c.log_every = 50
    c.eval_every_epochs = 10
    c.checkpoint_every_epochs = 10
    # the EMA teacher's backbone: k-NN and the correspondence picture (esvit_correspondence_<step>.png)
    c.evals = mlc.ConfigDict(dict(knn=dict(type="knn", ks=(10, 20)),
                                  knn_student=dict(type="knn", ks=(10, 20), network="student"),
                                  esvit_correspondence=dict(type="correspondences")))
    return c
