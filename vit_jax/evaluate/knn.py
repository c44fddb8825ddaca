"""k-NN classification on frozen features (DINO's protocol), and the "knn" evaluator.

Features are L2-normalised; each query takes its k most cosine-similar memory images,
weighted by exp(similarity / T), and predicts the class with the largest summed weight.
The evaluator reads the objective's backbone (`backbone_variables`: a DINO/EsViT run's EMA
teacher), or with network="student" the network being trained (`student_variables`, which a
method with a teacher declares), and writes eval/<name>/top1_k<k>:

    config.evals.knn = dict(type="knn", ks=(10, 20), temperature=0.07)
    config.evals.knn_student = dict(type="knn", ks=(10, 20), network="student")
    config.evals.knn = dict(type="knn", ks=(20,), memory_size=10_000)   # a subsampled memory
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.evaluate import features
from vit_jax.evaluate.context import EvalContext

DEFAULTS = dict(ks=(10, 20), temperature=0.07,
                split="",          # the queries ("" = data.eval_split)
                memory_split="",   # the labelled memory ("" = data.train_split)
                # > 0: a fixed random subset of this many memory images (the same at every
                # evaluation, from the run's seed), so k-NN during pre-training on a large
                # train split costs memory_size forward passes; 0: the whole split
                memory_size=0,
                network="backbone")  # "backbone" (backbone_variables) | "student" (student_variables)
NETWORKS = {"backbone": "backbone_variables", "student": "student_variables"}


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


class MemorySubset:
    """`size` examples of `source` drawn once from `seed` (sorted, so reads stay in file order)."""

    def __init__(self, source, size: int, seed: int):
        self.source = source
        self.indices = np.sort(np.random.default_rng([seed, 0x4B4E4E]).permutation(len(source))[:size])
        files = getattr(source, "files", None)
        if files is not None:   # messages name the file of a bad image
            self.files = [files[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[int(self.indices[i])]


def check(name: str, spec) -> None:
    if not spec.ks or not all(int(k) > 0 for k in spec.ks) or not spec.temperature > 0:
        raise ValueError(f"evals.{name}: ks must be positive integers and temperature > 0")
    if spec.network not in NETWORKS:
        raise ValueError(f"evals.{name}.network={spec.network!r}: use one of {sorted(NETWORKS)}")
    if not (isinstance(spec.memory_size, int) and spec.memory_size >= 0):
        raise ValueError(f"evals.{name}.memory_size={spec.memory_size!r} must be an int >= 0 "
                         f"(0: the whole memory split)")


def needs(spec) -> str:
    """The objective method that gives the evaluated network's variables."""
    return NETWORKS[spec.network]


def make(name: str, spec, ctx: EvalContext):
    """state, step -> {"eval/<name>/top1_k<k>": accuracy}."""
    objective, cfg = ctx.objective, ctx.config
    num_classes = objective.info.num_classes
    if num_classes <= 0:
        raise ValueError(f"evals.{name} (knn) needs a labelled dataset")
    feature_fn = jax.jit(features.pooled_features(objective.backbone))
    ks = tuple(int(k) for k in spec.ks)
    variables_of = getattr(objective, needs(spec))

    def run(state, step):
        del step
        variables = variables_of(state["params"], state["extra"])
        memory, queries = ctx.source(spec.memory_split or cfg.data.train_split), ctx.source(spec.split)
        if queries is None:   # no eval split: evaluation is off
            return {}
        if 0 < spec.memory_size < len(memory):
            memory = MemorySubset(memory, int(spec.memory_size), cfg.seed)
        train_x, train_y = features.extract(feature_fn, variables, ctx.batches(memory), ctx.mesh)
        test_x, test_y = features.extract(feature_fn, variables, ctx.batches(queries), ctx.mesh)
        preds = knn_predict(train_x, train_y, test_x, num_classes, ks, float(spec.temperature))
        return {f"eval/{name}/top1_k{k}": float(np.mean(p == test_y)) for k, p in preds.items()}
    return run
