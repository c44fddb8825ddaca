"""Which of mnist5k's 1,000 test digits each run gets wrong, and the ones every run gets wrong.

    python benchmarks/mnist5k_test_errors.py workdirs/mnist5k_cct workdirs/mnist5k_resnet [--png F]

Each WORKDIR is a supervised vit_jax run (any backbone with a head); its final checkpoint
classifies the test split with the run's own normalisation. Prints, per run, the accuracy and
the test indices it misses; then the indices that all runs miss, with the label and each run's
reading, and those that some miss, with how many runs miss each. --png writes the digits that all runs miss in a row, at 3x size.
"""
from __future__ import annotations

import argparse
import collections

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import teachers
from vit_jax.data import sources


def test_split() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28, 1) uint8, labels (N,)) of mnist5k's test split, in its order."""
    ds = sources.mnist5k("test")
    images = np.stack([np.asarray(ds[i]["image"]) for i in range(len(ds))])
    labels = np.array([int(ds[i]["label"]) for i in range(len(ds))])
    return images.reshape(len(ds), 28, 28, 1), labels


def predictions(workdir: str, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """(N,) the run's predicted classes."""
    clf = teachers.load_classifier("workdir:" + workdir)
    mean, std = np.asarray(clf.mean, np.float32), np.asarray(clf.std, np.float32)
    logits = jax.jit(lambda v, x: clf.logits(v, x, clf.mean, clf.std))
    return np.concatenate([
        np.asarray(logits(clf.variables, jnp.asarray((images[i:i + batch] / 255.0 - mean) / std,
                                                      jnp.float32))).argmax(1)
        for i in range(0, len(images), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--png", default="")
    a = ap.parse_args()
    images, labels = test_split()
    counts: collections.Counter[int] = collections.Counter()
    preds = {}
    for wd in a.workdirs:
        preds[wd] = predictions(wd, images)
        wrong = np.nonzero(preds[wd] != labels)[0].tolist()
        counts.update(wrong)
        print(f"{wd}: accuracy {1 - len(wrong) / len(labels):.3f}, misses {wrong}")
    every = sorted(i for i, n in counts.items() if n == len(a.workdirs))
    print(f"missed by all {len(a.workdirs)} runs ({len(every)}): " + ", ".join(
        f"{i} (a {labels[i]} read as {'/'.join(str(p[i]) for p in preds.values())})" for i in every))
    print("missed by some (index: runs): " + ", ".join(
        f"{i}: {n}" for i, n in sorted(counts.items()) if n < len(a.workdirs)))
    if a.png and every:
        row = np.concatenate([images[i, :, :, 0] for i in every], axis=1)
        Image.fromarray(row).resize((row.shape[1] * 3, 84), Image.Resampling.NEAREST).save(a.png)
        print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
