"""What an EVA teacher gives a student of a given patch grid: the cosine k-NN (k=10, mnist5k) of
the mean of its target tokens under each teacher view, and how much the tokens share one direction.

    python benchmarks/eva_teacher_views.py workdir:workdirs/quickstart --grid 7

Prints one JSON line per view ("student": EVA's, the image resized to grid x the teacher's patch;
"native": the teacher's own image size, tokens resized to the grid) with knn_mean_token_k10 and
mean_unit_token_norm (the norm of the mean of the unit-length target tokens: 0 when they point
every way, 1 when all point one way).
"""
from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

from vit_jax import teachers
from vit_jax.data import sources, transforms
from vit_jax.evaluate.knn import knn_predict


def targets(teacher: teachers.Teacher, images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    mean, std = transforms.get_stats("mnist")
    out = []
    for i in range(0, len(images), 500):
        x = (images[i:i + 500].astype(np.float32) / 255 - np.array(mean)) / np.array(std)
        out.append(np.asarray(teacher.targets(teacher.variables["params"], jnp.asarray(x), mean, std, grid)))
    return np.concatenate(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("teacher", help="a teacher spec, e.g. workdir:workdirs/quickstart")
    p.add_argument("--grid", type=int, default=7, help="the student's patch grid (7: 4x4 patches at 28 px)")
    a = p.parse_args(argv)
    train, test = sources.mnist5k("train"), sources.mnist5k("test")
    for view in teachers.VIEWS:
        t = teachers.load(a.teacher, view=view)
        tr, te = targets(t, train.images, (a.grid, a.grid)), targets(t, test.images, (a.grid, a.grid))
        pred = knn_predict(tr.mean(1), train.labels, te.mean(1), train.num_classes, (10,))[10]
        unit = tr.reshape(-1, tr.shape[-1])
        unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
        print(json.dumps({"view": view, "knn_mean_token_k10": round(float((pred == test.labels).mean()), 4),
                          "mean_unit_token_norm": round(float(np.linalg.norm(unit.mean(0))), 3)}), flush=True)


if __name__ == "__main__":
    main()
