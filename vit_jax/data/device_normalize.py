"""data.wire="uint8": the train transform's pixels cross to the devices as uint8 and its final
`normalize` runs there, inside one jitted call on the sharded batch (a quarter of float32's bytes
over PCIe or the host link; the host skips the float conversion).

Bit for bit the host op: a uint8 pixel takes one of 256 values per channel, so the host's own
`normalize` (vit_jax/data/normalization.py) computes the table of all of them once, and the device
looks each pixel up in it. Computing (x / 255 - mean) / std on the device instead would let XLA
fuse a multiply-add and round differently, and a run would drift from the float32 wire's.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.data.normalization import normalize


class DeviceNormalize:
    """batch -> batch with "image" uint8 (B, H, W, C) replaced by the normalised float32 images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], channels, axis=2)
        table = normalize(levels, self.mean, self.std)[:, 0, :]          # (256, C) float32

        def lookup(images: jax.Array) -> jax.Array:
            return jnp.asarray(table)[images.astype(jnp.int32), jnp.arange(channels)]
        self._lookup = jax.jit(lookup)   # elementwise: keeps the batch's sharding

    def __call__(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = dict(batch)
        out["image"] = self._lookup(batch["image"])
        return out

    def __repr__(self) -> str:
        return f"DeviceNormalize(mean={self.mean}, std={self.std})"
