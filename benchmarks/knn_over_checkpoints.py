"""The mnist5k k-NN of a pre-training run at each of its saved checkpoints, on the class token and
on the mean patch token (both after the final norm; DINO's weighted cosine k-NN, T = 0.07, the
protocol of configs/mnist5k/knn.py, whose WORKDIR and WORKDIR,gap read the last checkpoint only).

    python benchmarks/knn_over_checkpoints.py workdirs/mnist5k_mae

Prints one JSON line per checkpoint step: {"step", "cls_k10", "cls_k20", "gap_k10", "gap_k20"}.
The backbone is the run's own (`runs.load_run(...).backbone_variables`, as init_from reads it); a
ViT without a class token reports the mean patch token only.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import runs
from vit_jax.data import sources, transforms
from vit_jax.evaluate.knn import knn_predict

KS = (10, 20)


def features(run: runs.Run, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray | None, np.ndarray]:
    """uint8 (N, 28, 28, 1) digits -> (class tokens (N, D) or None, mean patch tokens (N, D))."""
    mean, std = transforms.get_stats("mnist")
    model, variables = run.model, run.backbone_variables
    encode = jax.jit(lambda v, x: model.apply(v, x)[1]["encoded"])
    prefix = getattr(model, "num_prefix_tokens", 0)
    cls, gap = [], []
    for i in range(0, len(images), batch):
        x = (images[i:i + batch].astype(np.float32) / 255 - np.array(mean)) / np.array(std)
        tokens = np.asarray(encode(variables, jnp.asarray(x, jnp.float32)))
        if prefix:
            cls.append(tokens[:, 0])
        gap.append(tokens[:, prefix:].mean(axis=1))
    return (np.concatenate(cls) if cls else None), np.concatenate(gap)


def knn_row(run: runs.Run, train, test, prefix: str = "") -> dict:
    """{prefix + "cls_k10": top-1, ..., prefix + "gap_k20": ...} of `run`'s backbone: the test
    digits classified against the train digits (knn_predict normalises the features)."""
    (cls_tr, gap_tr), (cls_te, gap_te) = features(run, train.images), features(run, test.images)
    row: dict = {}
    for name, tr, te in (("cls", cls_tr, cls_te), ("gap", gap_tr, gap_te)):
        if tr is None:
            continue
        pred = knn_predict(tr, train.labels, te, 10, KS)
        row.update({f"{prefix}{name}_k{k}": round(float((pred[k] == test.labels).mean()), 4) for k in KS})
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", help="a vit_jax pre-training workdir with checkpoints")
    a = p.parse_args(argv)
    train, test = sources.mnist5k("train"), sources.mnist5k("test")
    root = os.path.join(runs.workdir_of(a.workdir), "checkpoints")
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit())
    for step in steps:
        row = {"step": step, **knn_row(runs.load_run(a.workdir, step), train, test)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
