"""EsViT pre-training on ImageNet-1k, the paper's recipe (Li et al. 2021, microsoft/esvit README):
Swin-T, window 7, view + region losses, 300 epochs, 2 x 224 + 8 x 96 crops, batch 512.

    python -m vit_jax.main --config configs/imagenet/esvit.py:tiny --workdir gs://.../esvit_swin_t \
        --config.data.data_dir=/path/to/tfds --multihost

ARG: tiny (Swin-T W7) | small | base; append ",v" for the view loss only (DINO). Heads: 65,536
prototypes, hidden 2048, bottleneck 256, norm_last_layer False (as the README's Swin-T command).
AdamW, lr 5e-4 * 512 / 256 with 10 warm-up epochs, cosine to 1e-6; weight decay cosine 0.04 -> 0.4;
per-parameter clipping 3.0; teacher temperature 0.04 -> 0.07 over 30 epochs; EMA 0.996 -> 1; last
layers frozen in epoch 0; drop path 0.1 on the student. Published (Swin-T W7, V+R): linear 78.0,
k-NN 75.7; view only: 77.0 / 74.2. Not run here (no ImageNet offline); validated on tfds mock data.
"""
import ml_collections as mlc

from vit_jax import objectives
from vit_jax.config_base import imagenet_config

MODELS = {"tiny": "swin_tiny_patch4_window7_224", "small": "swin_small_patch4_window7_224",
          "base": "swin_base_patch4_window7_224"}


def get_config(arg: str = "tiny"):
    size, *rest = (arg or "tiny").split(",")
    c = imagenet_config()
    c.objective = "esvit"
    c.model_name = MODELS[size]
    c.model.update(dict(drop_path_rate=0.1))
    c.data.train_transform = "normalize('none')"   # the objective crops and normalises
    c.data.wire = "float32"   # the objective's crops travel as uint8 (photometric_on_device below)
    c.esvit = objectives.default_config("esvit")
    c.esvit.update(dict(region=rest != ["v"], out_dim=65536, norm_last_layer=False,
                        global_size=224, local_size=96, num_local=8, pixel_stats="imagenet",
                        warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30,
                        momentum_teacher=0.996, freeze_last_layer_epochs=1,
                        photometric_on_device=True))   # uint8 crops over PCIe, the chain in the step
    c.batch_size = 512
    c.num_epochs = 300
    c.optim.lr = 5e-4 * c.batch_size / 256
    c.optim.end_lr = 1e-6
    c.optim.warmup_epochs = 10
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.clip_norm = 3.0
    c.optim.clip_mode = "per_param"
    # the EMA teacher's k-NN: over 1.28M train images it costs an epoch of forward passes
    c.evals = mlc.ConfigDict(dict(knn=dict(type="knn", ks=(20,), every_epochs=10),
                                  esvit_correspondence=dict(type="correspondences", every_epochs=10)))
    return c
