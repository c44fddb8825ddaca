"""The raw-pixel floors of the mnist5k small-data table: what the 784 pixels give with no network.

    python benchmarks/pixel_floors_mnist5k.py

k-NN: the same weighted cosine k-NN as the `knn` evaluator (vit_jax/evaluate/knn.py: DINO's
protocol, T = 0.07; memory = the 4,000 training digits, queries = the 1,000 test digits) on the
pixels scaled to [0, 1]. Linear: scikit-learn's LogisticRegression (lbfgs, C = 1, up to 1,000
iterations) on the same pixels. A representation that claims to help on these digits has to beat
these numbers, not only the random-init network.
"""
from __future__ import annotations

import json

import numpy as np
from sklearn.linear_model import LogisticRegression

from vit_jax.data import mnist5k
from vit_jax.evaluate.knn import knn_predict


def pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    src = mnist5k(split)
    x = np.stack([np.asarray(src[i]["image"], np.float32).ravel() / 255.0 for i in range(len(src))])
    y = np.asarray([int(src[i]["label"]) for i in range(len(src))])
    return x, y


def main() -> None:
    (x_tr, y_tr), (x_te, y_te) = pixels("train"), pixels("test")
    preds = knn_predict(x_tr, y_tr, x_te, 10, (10, 20), temperature=0.07)
    out = {f"knn_top1_k{k}": float(np.mean(p == y_te)) for k, p in preds.items()}
    probe = LogisticRegression(max_iter=1000).fit(x_tr, y_tr)
    out["logistic_regression_accuracy"] = float(probe.score(x_te, y_te))
    print("final: " + json.dumps(out))


if __name__ == "__main__":
    main()
