"""The CIFAR ResNets of He et al. 2016 (Sec. 4.2) on CIFAR-10: the CNN row of every CIFAR table.

    python -m vit_jax.main --config configs/cifar/resnet.py --workdir DIR --config.data.data_dir=/path/to/tfds
    python -m vit_jax.main --config configs/cifar/resnet.py:20 --workdir DIR

Data: tfds cifar10 prepared as array_record. ARG = [DEPTH][,seed=N]: DEPTH 56 (default,
resnet56_cifar: three stages of 9 basic blocks, 16/32/64 channels, option-A shortcuts, 0.85M
parameters) or 20 (resnet20_cifar, 0.27M). The paper's recipe: SGD with momentum 0.9, weight
decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k of 64k iterations (here 164 epochs,
steps at 50% and 75% of the run), 4-pixel zero padding + random 32 crops + flips.
Published (CIFAR-10 test error): ResNet-20 8.75%, ResNet-56 6.97% (93.03% top-1).
Where ours differs: He et al. train on 45k images (5k held out) and subtract the per-pixel mean;
here all 50k train images, normalised with CIFAR-10's channel statistics; weight decay on the
kernels only (timm's rule: no BatchNorm scales or biases). Not run here: no CIFAR-10 offline
(tests validate it on tfds mock data).
"""
from vit_jax import objectives
from vit_jax.config_base import cifar10_config, parse_config_arg

MODELS = {"56": "resnet56_cifar", "20": "resnet20_cifar"}


def get_config(arg: str = "56"):
    a = parse_config_arg(arg, depth=("56", tuple(MODELS)), seed=(0, ()))
    c = cifar10_config()
    c.seed = a["seed"]
    c.model_name = MODELS[a["depth"]]
    c.model = dict()
    c.data.train_transform = "pad_crop(32, 4)|flip|normalize('cifar10')"
    c.num_epochs = 164.0                        # 64k iterations of 128 on 50k images
    c.optim.name = "sgd"
    c.optim.b1 = 0.9                            # SGD's momentum
    c.optim.lr = 0.1
    c.optim.schedule = "step"
    c.optim.step_boundaries = (0.5, 0.75)       # 32k and 48k of 64k iterations
    c.optim.step_factor = 0.1
    c.optim.weight_decay = 1e-4
    c.optim.clip_norm = 0.0
    c.supervised = objectives.default_config("supervised")
    return c
