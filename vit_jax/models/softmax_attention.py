"""softmax(q k^T) v for head-major (B, H, L, hd) operands, with a hand-written derivative.

Automatic differentiation of softmax(S) v forms the softmax's backward term rowsum(dP * P) over
the (L, L) weights P and their gradient dP = dO v^T: XLA:CPU fuses it with that product into one
pass over three (B, H, L, L) arrays (ViT-S/16 b32: 42 ms a block, `benchmarks/step_profile.py`).
Here the tangent is written as

    dO = (P * dS) v - rowsum(P * dS) * O + P dv,    dS = dq k^T + q dk^T,

whose transpose (the backward pass JAX derives from it) takes that term from the (L, hd) output
instead, rowsum(dO * O), as flash attention's backward does: dS = P * (dO v^T - rowsum(dO * O))
is then elementwise (21 ms a block). A JVP rule, not a VJP, so forward mode and every order of
derivative keep working.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _forward(q: Array, k: Array, v: Array) -> tuple[Array, Array]:
    weights = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32), axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v), weights


@jax.custom_jvp
def softmax_attention(q: Array, k: Array, v: Array) -> Array:
    """q (B, H, Lq, hd), already scaled; k, v (B, H, Lk, hd) -> (B, H, Lq, hd). Weights in float32."""
    return _forward(q, k, v)[0]


@softmax_attention.defjvp
def _softmax_attention_jvp(primals, tangents):
    (q, k, v), (dq, dk, dv) = primals, tangents
    out, weights = _forward(q, k, v)
    d_logits = (jnp.einsum("bhqd,bhkd->bhqk", dq, k) + jnp.einsum("bhqd,bhkd->bhqk", q, dk)).astype(jnp.float32)
    moved = weights * d_logits
    d_out = (jnp.einsum("bhqk,bhkd->bhqd", moved.astype(v.dtype), v)
             - jnp.sum(moved, axis=-1, keepdims=True).astype(out.dtype) * out
             + jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), dv))
    return out, d_out
