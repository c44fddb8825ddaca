"""The random-init k-NN floor of the mnist5k ViT under two initialisations: ours (MAE's Xavier) and
facebookresearch/dino's (Linear kernels trunc-normal std 0.02 with zero biases, class token and
position embedding trunc-normal 0.02, the patch conv at PyTorch's default U(+-1/sqrt(fan_in))).

    python benchmarks/dino_init_floor.py

It explains why the official DINO code and ours start (and, when DINO collapses, end) at different
k-NN on the same data: README's small-data table, the DINO cross-check. Same k-NN as the `knn`
evaluator (weighted cosine, T = 0.07, 4,000 train digits as memory, 1,000 test digits as queries).
"""
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models, trees
from vit_jax.config_base import MNIST5K_MODEL
from vit_jax.data import mnist5k
from vit_jax.evaluate.knn import knn_predict


def data(split):
    s = mnist5k(split)
    x = np.stack([np.asarray(s[i]["image"], np.float32) for i in range(len(s))]) / 255.0
    return (x - 0.1307) / 0.3081, np.asarray([int(s[i]["label"]) for i in range(len(s))])

model = models.create("vit_tiny_patch4_28", num_classes=0, in_channels=1, **MNIST5K_MODEL)
xtr, ytr = data("train"); xte, yte = data("test")
params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
def dino_init(params, key):
    leaves, tdef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves)); out = []
    for (path, x), k in zip(leaves, keys):
        name = trees.path_str(path)
        if name.startswith("embedding/"):      # torch Conv2d default: U(+-1/sqrt(fan_in))
            fan_in = int(np.prod(x.shape[:-1])) if x.ndim == 4 else 16
            out.append(jax.random.uniform(k, x.shape, minval=-1, maxval=1) / np.sqrt(fan_in))
        elif name.endswith("kernel"):           # trunc_normal(std=0.02), bias 0
            out.append(0.02 * jax.random.truncated_normal(k, -2.0, 2.0, x.shape))
        elif name.endswith("bias"):
            out.append(jnp.zeros_like(x))
        elif name in ("pos_embed", "cls_token"):
            out.append(0.02 * jax.random.truncated_normal(k, -2.0, 2.0, x.shape))
        else:
            out.append(x)
    return jax.tree_util.tree_unflatten(tdef, out)
f = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
def feats(p, x): return np.concatenate([np.asarray(f(p, jnp.asarray(x[i:i+500]))) for i in range(0, len(x), 500)])
for name, p in (("ours (MAE xavier)", params), ("DINO's init", dino_init(params, jax.random.key(1)))):
    pr = knn_predict(feats(p, xtr), ytr, feats(p, xte), 10, (10, 20), 0.07)
    print(name, {k: float(np.mean(v == yte)) for k, v in pr.items()})
