"""k-NN classification on frozen features (DINO's protocol).

Features are L2-normalised; each test image takes its k most cosine-similar training images,
weighted by exp(similarity / T), and predicts the class with the largest summed weight.
As an objective ("knn", total_steps = 0) it evaluates the backbone of config.init_from (or a
random one, the floor); other objectives call `knn_accuracy` during pre-training.

    python -m vit_jax.main --config configs/mnist5k/knn.py:WORKDIR_OF_PRETRAINING --workdir DIR
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vit_jax import models
from vit_jax.evaluate import features
from vit_jax.objectives.supervised import backbone_kwargs
from vit_jax.objectives import EvalContext, Objective, register


def default_config() -> mlc.ConfigDict:
    return mlc.ConfigDict(dict(ks=(10, 20, 100, 200), temperature=0.07))


def knn_predict(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                num_classes: int, ks: Sequence[int], temperature: float = 0.07,
                chunk: int = 1024) -> dict[int, np.ndarray]:
    """Predicted labels (N_test,) for each k. Features (N, D) need not be normalised."""
    def normalise(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    train = jnp.asarray(normalise(train_feats))
    onehot = jax.nn.one_hot(jnp.asarray(train_labels), num_classes)
    kmax = min(max(ks), train.shape[0])

    @jax.jit
    def top(test):
        sims, idx = jax.lax.top_k(test @ train.T, kmax)   # (n, kmax), sorted
        return sims, idx

    preds: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    test_all = normalise(test_feats)
    for i in range(0, len(test_all), chunk):
        sims, idx = top(jnp.asarray(test_all[i:i + chunk]))
        weights = jnp.exp(sims / temperature)
        votes = onehot[idx] * weights[..., None]           # (n, kmax, C)
        for k in ks:
            k_ = min(k, kmax)
            preds[k].append(np.asarray(jnp.argmax(votes[:, :k_].sum(1), -1)))
    return {k: np.concatenate(v) for k, v in preds.items()}


def knn_accuracy(feature_fn: Callable, params, ctx: EvalContext, num_classes: int,
                 ks: Sequence[int], temperature: float, prefix: str = "eval/knn") -> dict[str, float]:
    """k-NN top-1 accuracy of `feature_fn` features: train split as memory, eval split as queries."""
    cfg = ctx.config
    train_x, train_y = features.extract(feature_fn, params, ctx.train_source, ctx.eval_transform, ctx.mesh,
                                        cfg.eval_batch_size, cfg.data.workers)
    test_x, test_y = features.extract(feature_fn, params, ctx.eval_source, ctx.eval_transform, ctx.mesh,
                                      cfg.eval_batch_size, cfg.data.workers)
    preds = knn_predict(train_x, train_y, test_x, num_classes, ks, temperature)
    return {f"{prefix}/top1_k{k}": float(np.mean(p == test_y)) for k, p in preds.items()}


class KNN(Objective):
    """Evaluation only: k-NN accuracy of a (pre-trained) backbone's pooled features."""
    name = "knn"

    def __init__(self, config, info):
        super().__init__(config, info)
        self.model = models.create(config.model_name, **backbone_kwargs(config, info, num_classes=0))

    def check_config(self) -> None:
        if self.config.total_steps != 0:
            raise ValueError("the knn objective only evaluates: set total_steps=0")
        if not self.config.data.eval_split:
            raise ValueError("knn needs data.eval_split for the queries")
        if not all(int(k) > 0 for k in self.config.knn.ks) or self.config.knn.temperature <= 0:
            raise ValueError("knn.ks must be positive integers and knn.temperature > 0")

    def init(self, rng, batch):
        variables = self.model.init({"params": rng}, batch["image"], train=False)
        params = variables.pop("params")
        return params, dict(variables)

    def load_pretrained(self, params, extra):
        if not self.config.init_from:
            return params, extra  # a random backbone: the floor
        from vit_jax.evaluate import backbone
        return backbone.load_backbone(self.config.init_from, params), extra

    def loss(self, params, extra, batch, rng, step):
        raise NotImplementedError("knn does not train")

    def on_eval(self, params, extra, ctx):
        def feature_fn(variables, images):
            return self.model.apply(variables, images, train=False)[0]
        return knn_accuracy(feature_fn, {"params": params, **extra}, ctx, self.info.num_classes, self.config.knn.ks,
                            self.config.knn.temperature)


register("knn", KNN)
