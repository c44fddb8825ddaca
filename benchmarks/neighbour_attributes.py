"""What a backbone's nearest neighbours have in common on mnist5k: the digit, or its style?

    python benchmarks/neighbour_attributes.py workdirs/dino_remedies_20ep [workdirs/quickstart ...]

For each of the 1,000 test digits, the 10 most cosine-similar of the 4,000 training digits under
each workdir's backbone (its pooled features, the `knn` evaluator's), under the raw pixels, and
under a random-init mnist5k ViT (xavier, seed 0). Printed per feature set: the share of neighbours
with the query's label, and for five style attributes of the image the mean |difference| between
a query and its neighbours divided by that between a query and random training digits (1.0: the
neighbours ignore the attribute; small: they share it). Attributes: ink (sum of the pixels),
height and width (the ink's standard deviation along each axis), slant (its x-y covariance over its
y variance) and stroke width (2 x ink area / boundary length of the 0.5-thresholded digit).
A representation organised by digit shares the label; one that tells instances apart by what
survives a crop shares ink and stroke width instead (README's small-data table, the DINO plateau).
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models, runs
from vit_jax.config_base import MNIST5K_MODEL
from vit_jax.data import mnist5k, transforms


def data(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) in [0, 1] and labels (N,)."""
    s = mnist5k(split)
    x = np.stack([np.asarray(s[i]["image"], np.float32) for i in range(len(s))]) / 255.0
    return x, np.asarray([int(s[i]["label"]) for i in range(len(s))])


def attributes(x: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 28, 28, 1) in [0, 1] -> five (N,) style attributes (module docstring)."""
    x = x[..., 0]
    ink = x.sum((1, 2))
    ys, xs = np.mgrid[:x.shape[1], :x.shape[2]]
    m = x / np.maximum(ink[:, None, None], 1e-6)
    dy = ys - (m * ys).sum((1, 2))[:, None, None]
    dx = xs - (m * xs).sum((1, 2))[:, None, None]
    vy, vx, cxy = (m * dy ** 2).sum((1, 2)), (m * dx ** 2).sum((1, 2)), (m * dx * dy).sum((1, 2))
    b = x > 0.5
    boundary = (b[:, 1:] != b[:, :-1]).sum((1, 2)) + (b[:, :, 1:] != b[:, :, :-1]).sum((1, 2))
    return dict(ink=ink, height=np.sqrt(vy), width=np.sqrt(vx), slant=cxy / np.maximum(vy, 1e-6),
                stroke=2 * b.sum((1, 2)) / np.maximum(boundary, 1))


def report(name: str, train_f: np.ndarray, test_f: np.ndarray, train: tuple, test: tuple) -> None:
    a = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
    b = test_f / np.linalg.norm(test_f, axis=1, keepdims=True)
    nn = np.argsort(-(b @ a.T), axis=1)[:, :10]
    rnd = np.random.default_rng(0).integers(0, len(a), nn.shape)
    at_tr, at_te = attributes(train[0]), attributes(test[0])
    ratios = {k: np.abs(at_tr[k][nn] - at_te[k][:, None]).mean()
              / np.abs(at_tr[k][rnd] - at_te[k][:, None]).mean() for k in at_tr}
    print(f"{name}: same label among the top-10 {np.mean(train[1][nn] == test[1][:, None]):.3f} | "
          "neighbour / random |difference|: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


def features(model, variables, x: np.ndarray) -> np.ndarray:
    f = jax.jit(lambda v, im: model.apply(v, im, train=False)[0])
    mean, std = transforms.get_stats("mnist")   # normalize('mnist'), every mnist5k config's eval transform
    x = (x - np.float32(mean[0])) / np.float32(std[0])
    return np.concatenate([np.asarray(f(variables, jnp.asarray(x[i:i + 500])))
                           for i in range(0, len(x), 500)])


def main(workdirs: list[str]) -> None:
    train, test = data("train"), data("test")
    report("raw pixels", train[0].reshape(len(train[0]), -1), test[0].reshape(len(test[0]), -1), train, test)
    vit = models.create("vit_tiny_patch4_28", num_classes=0, in_channels=1, **MNIST5K_MODEL)
    variables = vit.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    report("random-init ViT", features(vit, variables, train[0]), features(vit, variables, test[0]), train, test)
    for w in workdirs:
        run = runs.load_run(w)
        model, variables = run.model, run.backbone_variables
        report(w, features(model, variables, train[0]), features(model, variables, test[0]), train, test)


if __name__ == "__main__":
    main(sys.argv[1:])
