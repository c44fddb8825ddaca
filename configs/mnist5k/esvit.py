"""EsViT / DINO self-distillation on mnist5k (4,000 train digits), the small-data recipe.

    python -m vit_jax.main --config configs/mnist5k/esvit.py:vr,vit --workdir workdirs/mnist5k_esvit_vr_vit
    python -m vit_jax.main --config configs/mnist5k/esvit.py:v,vit --workdir workdirs/mnist5k_esvit_v_vit

ARG = LOSS,BACKBONE: LOSS "vr" (view + region, EsViT) or "v" (view only, i.e. DINO); BACKBONE
"vit" (the shared small-data ViT, 4x4 patches, the network of the MAE and EVA rows) or "swin"
(EsViT's choice: the mnist5k Swin, 2x2 patches, window 7, embed 48, depths 2-2). Crops: 2 x 28 px
at scale (0.4, 1) + 6 x 12 px at (0.05, 0.4) with DINO's jitter / blur / solarisation (no flips:
digits are not mirror-symmetric). Heads: 1024 prototypes (hidden 512, bottleneck 128; 65,536 are
for ImageNet). 20 epochs of floor(4000 / 128) = 31 steps (DINO's loader drops the last partial
batch: data.drop_remainder), AdamW lr 1e-3 (batch 128) with 2 warm-up epochs, weight decay cosine
0.04 -> 0.4 on all but biases and 1-D tensors (DINO's groups), per-parameter clipping 3.0, last
layers held by the optimizer in epoch 0 (as torch's AdamW skips a parameter without gradient),
the ViT initialised as DINO's (model.weight_init="dino": trunc-normal 0.02, torch's patch conv) and
its position embedding resized for the 12-px crops with DINO's bicubic (+0.1 offset).
Teacher: temperature 0.02 and EMA 0.99 -> 1, not the papers' 0.04 -> 0.07 and 0.996: at this
budget the papers' teacher stays uniform (view loss ln(1024) throughout, measured; README). k-NN
of the teacher (eval/knn/top1_k*) and of the student (eval/knn_student/top1_k*) at every
evaluation, with the share of the teacher's top-10 correspondences that fall on ink in both views
(eval/esvit_correspondence/ink_top10, 100 test digits). DINOv2's remedies are options, off here: esvit.sinkhorn_iters, esvit.koleo_weight.
Then, on the EMA teacher's backbone:
    python -m vit_jax.main --config configs/mnist5k/linear_probe.py:workdirs/mnist5k_esvit_vr_vit --workdir workdirs/mnist5k_esvit_vr_vit_probe
    python -m vit_jax.main --config configs/mnist5k/knn.py:workdirs/mnist5k_esvit_vr_vit --workdir workdirs/mnist5k_esvit_vr_vit_knn
Measured: this recipe does not learn on mnist5k, in our code or in the official one. In 8 epochs
(`--config.num_epochs=8`) the view loss rises from 4.6 to 6.88 (ln 1024 = 6.93) and the teacher's
k-NN (k=10) ends at the random floor, 37.0% (34-36% at init); the official facebookresearch/dino
code on the same recipe and steps ends at 36.6% (loss 4.4 -> 6.9): README's small-data table.
EsViT (vr,vit), 8 epochs: teacher k-NN 37.7 / 39.8, student 41.1 / 42.2 (view only: 37.0 / 38.5
and 36.2 / 36.5); top-10 matches on ink in both views 27.2% (view only 25.8%). Earlier 20-epoch runs (H100, before
the fixes above): DINO probe 47.1, k-NN 47.8 / 49.4; EsViT probe 42.4, k-NN 43.2 / 42.4.
"""
import ml_collections as mlc

from vit_jax.config_base import MNIST5K_MODEL, mnist5k_config
from vit_jax import objectives

BACKBONES = {
    "swin": ("swin_tiny_patch4_window7_224", dict(patch_size=2, width=48, depths=(2, 2),
                                                  num_heads=(3, 6), window_size=7, image_size=28,
                                                  drop_path_rate=0.1)),
    # DINO's ViT: its init (trunc-normal 0.02, torch's patch conv) and its resize of the position
    # embedding for the local crops (bicubic, +0.1 scale-factor offset)
    "vit": ("vit_tiny_patch4_28", dict(MNIST5K_MODEL, drop_path_rate=0.1, posemb_interp="bicubic_dino",
                                       weight_init="dino", pool="token")),
}


def get_config(arg: str = "vr,vit"):
    loss, backbone = (arg or "vr,vit").split(",")
    if loss not in ("v", "vr") or backbone not in BACKBONES:
        raise ValueError(f"ARG {arg!r}: use LOSS,BACKBONE with LOSS in v|vr and BACKBONE in {list(BACKBONES)}.")
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
