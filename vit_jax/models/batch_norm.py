"""BatchNorm with PyTorch's semantics (running statistics in the "batch_stats" collection).

Shared by the backbones that normalise with batch statistics: CvT's convolutional projections and
the ResNets. Call with train=True and mutable=["batch_stats"] to update the running averages.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.layers import Dtype

Array = jax.Array


class BatchNorm(nn.Module, kw_only=True):
    """BatchNorm over all but the last axis, with PyTorch's semantics.  (..., C) -> (..., C).

    Like nn.BatchNorm2d: normalises with the biased batch variance but updates the running
    variance with the unbiased one (flax's nn.BatchNorm uses the biased one there), so
    training continues exactly like a PyTorch checkpoint would.  momentum is flax-style
    (running = momentum * running + (1 - momentum) * batch): PyTorch's 0.1 is 0.9 here.
    """
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)  # two-pass, as torch (bf16 safe)
            if not self.is_initializing():
                n = int(np.prod([x.shape[a] for a in axes]))
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        y = (x.astype(jnp.float32) - mean) * mul + bias.astype(jnp.float32)
        return y.astype(self.dtype)
