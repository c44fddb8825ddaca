"""Features of a frozen backbone over a whole data source, gathered on every process."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import sharding


def pooled_features(module: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """variables, images (B, H, W, C) -> the backbone's pooled features `out` (B, D), float32, eval mode."""
    def fn(variables, images):
        return module.apply(variables, images, train=False)[0].astype(jnp.float32)
    return fn


def extract(feature_fn: Callable[[Any, jax.Array], jax.Array], params: Any, batches: Iterable[dict],
            mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, labels (N,)) in source order, from `batches`: this process' rows of
    an ordered, padded pass (EvalContext.batches; padding rows, "mask" 0, are dropped).

    `feature_fn(params, images)` maps a global image batch (B, H, W, C) to (B, D); pass it
    jitted (jax.jit) and reuse it, so repeated extractions compile once. The parameters are an
    argument, not constants baked into the program.
    """
    feats, labels, pending = [], [], None

    def collect(out: dict) -> None:
        out = sharding.to_host(out)
        keep = np.asarray(out["m"]) > 0
        feats.append(np.asarray(out["f"], np.float32)[keep])
        labels.append(np.asarray(out["y"])[keep])

    # One batch in flight: the device computes batch i while the host reads batch i - 1 and
    # prepares batch i + 1, instead of waiting for each batch's features before the next.
    for local in batches:
        batch = sharding.global_batch(local, mesh)
        out = {"f": feature_fn(params, batch["image"]), "y": batch["label"], "m": batch["mask"]}
        if pending is not None:
            collect(pending)
        pending = out
    if pending is not None:
        collect(pending)
    return np.concatenate(feats), np.concatenate(labels)
