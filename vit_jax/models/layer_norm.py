"""Layer norm over the last axis with a hand-written derivative; flax.linen.LayerNorm's parameters.

flax's LayerNorm is differentiated op by op: the mean, the centred square, the variance, its rsqrt
and the affine each get their own derivative, and XLA fuses the lot into a backward pass that
reads six (B, L, D) arrays and makes three row sums (ViT-S/16 b32 on XLA:CPU: 7 ms for one norm's
input gradient, `benchmarks/step_profile.py`). The derivative of y = xhat * scale + bias,
xhat = (x - mean) * r, r = rsqrt(var + eps), is

    dy = r * (t - mean(t) - xhat * mean(t * xhat)) * scale + xhat * dscale + dbias

for a tangent t of x; its transpose (the backward pass) reads the cotangent and xhat once for
the input gradient, with two row means. The forward values are flax's to the last bit: the same
statistics (E[(x - mean)^2], not E[x^2] - mean^2) and the same order of operations.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _stats(x: Array, eps: float) -> tuple[Array, Array, Array]:
    """-> (x in at least float32, its mean, rsqrt(var + eps)), statistics (..., 1)."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = xf.mean(-1, keepdims=True)
    centred = xf - mean
    return xf, mean, jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + eps)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, in at least float32.

    x: (..., D); scale, bias: (D,). Returns (..., D) in promote(x, float32, scale, bias).
    """
    xf, mean, r = _stats(x, eps)
    return (xf - mean) * (r * scale) + bias        # flax: mul = r * scale; y = (x - mean) * mul + bias


@layer_norm.defjvp
def _layer_norm_jvp(eps, primals, tangents):
    (x, scale, bias), (tx, tscale, tbias) = primals, tangents
    xf, mean, r = _stats(x, eps)
    centred = xf - mean
    xhat = centred * r
    t = tx.astype(xf.dtype)
    dxhat = r * (t - t.mean(-1, keepdims=True) - xhat * (t * xhat).mean(-1, keepdims=True))
    return centred * (r * scale) + bias, dxhat * scale + xhat * tscale + tbias


class LayerNorm(nn.Module, kw_only=True):
    """Layer norm over the last axis, params "scale" (D,) and "bias" (D,): flax.linen.LayerNorm's
    names, initial values and outputs (use_fast_variance=False), with `layer_norm`'s derivative.
    (..., D) -> (..., D) in `dtype` (None: promote(x, params))."""
    epsilon: float = 1e-6
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
        y = layer_norm(x, scale, bias, self.epsilon)
        return y.astype(self.dtype or jnp.result_type(x, scale, bias))
