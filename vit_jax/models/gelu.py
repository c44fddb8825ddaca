"""Exact (erf) GELU with a hand-written derivative: x * Phi(x), Phi the standard normal CDF.

jax.nn.gelu(approximate=False) computes x * erfc(-x / sqrt(2)) / 2. Its erfc has two rational
branches and an exp, and its automatic derivative evaluates them again: in the ViT-S/16 b32 train
step on XLA:CPU, three elementwise passes over each (32, 197, 1536) MLP activation, 437 ms of the
step's instructions (`python benchmarks/step_profile.py`). Here Phi(x) = (1 + erf(x / sqrt(2))) / 2,
torch's and transformers' own formula, is evaluated once and the derivative Phi(x) + x phi(x) is
formed in the same pass: two passes, 225 ms. The values agree with jax.nn.gelu and torch to 1e-6 (tests/test_gelu.py): below
x = -5, 1 + erf rounds to 0 in float32 where erfc still resolves ~1e-7, as in torch's kernel.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array
_RSQRT2 = 1 / math.sqrt(2)          # Python floats: weakly typed, so bf16 stays bf16
_RSQRT2PI = 1 / math.sqrt(2 * math.pi)


@jax.custom_jvp
def gelu(x: Array) -> Array:
    """x * Phi(x), elementwise; any shape and float dtype."""
    return x * (0.5 + 0.5 * jax.lax.erf(x * _RSQRT2))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = 0.5 + 0.5 * jax.lax.erf(x * _RSQRT2)
    slope = cdf + x * jnp.exp(-0.5 * x * x) * _RSQRT2PI   # d/dx x Phi(x) = Phi(x) + x phi(x)
    return x * cdf, slope * t
