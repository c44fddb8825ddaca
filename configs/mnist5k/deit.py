"""DeiT on mnist5k: the shared small-data ViT with a distillation token, taught by the CNN anchor.

    python -m vit_jax.main --config configs/mnist5k/resnet.py --workdir workdirs/mnist5k_resnet   # the teacher
    python -m vit_jax.main --config configs/mnist5k/deit.py --workdir workdirs/mnist5k_deit
    python -m vit_jax.main --config configs/mnist5k/deit.py:none --workdir workdirs/mnist5k_deit_none

ARG: comma-separated, any order: a teacher (a workdir path, default workdirs/mnist5k_resnet, or
hf:FOLDER) and a distillation type: hard (default; DeiT's recommended one), soft, or none (the
baseline at the same budget: the same ViT without the distillation token and without a teacher).

Student: the shared small-data ViT (4x4 patches, 7x7 grid, width 128, depth 6, 4 heads) with
DeiT's tokens [class, distillation, patches] and two heads; at inference the heads' logits are
averaged. Recipe: configs/mnist5k/finetune.py's from-scratch one (15 epochs, AdamW lr 1e-3 with 60
warm-up steps, weight decay 0.05, drop path 0.1, label smoothing 0.1 in the class head's loss) with
class-token pooling (DeiT's), on the teacher's crops: random 2-pixel shifts, mnist statistics.
Hard distillation: 0.5 CE(class head, label) + 0.5 CE(distillation head, the teacher's argmax on
the same shifted image). Evaluation: eval/test/accuracy (the averaged heads), accuracy_cls and
accuracy_dist (each head alone) and accuracy_teacher. Result: README's small-data table.
"""
from vit_jax import objectives
from vit_jax.config_base import mnist5k_config

TYPES = ("hard", "soft", "none")


def get_config(arg: str = ""):
    teacher, kind = "workdirs/mnist5k_resnet", "hard"
    for part in filter(None, (p.strip() for p in arg.split(","))):
        if part in TYPES:
            kind = part
        else:
            teacher = part
    c = mnist5k_config()
    c.objective = "distill"
    c.distill = objectives.default_config("distill")
    c.distill.update(dict(target="logits", type=kind, alpha=0.5, tau=1.0, label_smoothing=0.1))
    if kind != "none":
        c.distill.teacher = teacher if teacher.startswith("hf:") else "workdir:" + teacher
    c.model.update(dict(dist_token=kind != "none", drop_path_rate=0.1, head_init_std=2e-5))
    c.num_epochs = 15
    c.optim.lr = 1e-3
    c.optim.b2 = 0.999
    c.optim.warmup_steps = 60
    c.optim.weight_decay = 0.05
    c.log_every = 100
    c.eval_every_epochs = 7.5
    c.checkpoint_every_epochs = 15
    return c
