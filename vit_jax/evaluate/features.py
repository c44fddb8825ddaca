"""Features of a frozen backbone over a whole data source, gathered on every process."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import sharding
from vit_jax.data import pipeline


def extract(feature_fn: Callable[[Any, jax.Array], jax.Array], params: Any, source: Any,
            transform: Callable, mesh: jax.sharding.Mesh, batch_size: int,
            workers: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, labels (N,)) in source order.

    `feature_fn(params, images)` maps a global image batch (B, H, W, C) to (B, D); it is jitted
    once here, with the parameters as an argument (not baked into the program as constants).
    """
    fn = jax.jit(lambda p, images: feature_fn(p, images).astype(jnp.float32))
    feats, labels = [], []
    for local in pipeline.eval_batches(source, transform, batch_size, jax.process_index(),
                                       jax.process_count(), workers):
        batch = sharding.global_batch(local, mesh)
        out = sharding.to_host({"f": fn(params, batch["image"]), "y": batch["label"], "m": batch["mask"]})
        keep = np.asarray(out["m"]) > 0
        feats.append(np.asarray(out["f"])[keep])
        labels.append(np.asarray(out["y"])[keep])
    return np.concatenate(feats), np.concatenate(labels)
