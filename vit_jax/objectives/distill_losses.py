"""Distillation losses as pure functions: DeiT's (facebookresearch/deit losses.py) and TinyMIM's
relations (OliverRensu/TinyMIM).

DeiT, on the student's class logits s_cls, distillation logits s_dist and the teacher's logits t:
    hard   (1 - alpha) CE(s_cls, y) + alpha CE(s_dist, argmax t)                  (alpha 0.5: DeiT's)
    soft   (1 - alpha) CE(s_cls, y) + alpha KL(softmax(t / tau) || softmax(s_dist / tau)) tau^2
    where the KL is summed over the batch and the classes and divided by B * K (torch's kl_div
    with reduction "sum" and log_target, divided by the student logits' numel), and CE(s_cls, y)
    is the base criterion (one-hot or soft targets: label smoothing, mixup).
TinyMIM, on one attention block's queries, keys and values (after its norm1), split into H heads
of width d_h:
    relations   R_qk = softmax(q k^T / sqrt(d_h)),  R_vv = softmax(v v^T / sqrt(d_h)),  (B, H, N, N)
    loss        KL(R_teacher || R_student) summed over the keys and averaged over the batch, the
                heads and the queries, for qk and vv, added with equal weights.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


# ------------------------------------------------------------------------------ DeiT

def soft_distillation(student_logits: Array, teacher_logits: Array, tau: float) -> Array:
    """DeiT's soft term: sum over batch and classes of p_t (log p_t - log p_s) at temperature tau,
    times tau^2, divided by the number of student logits (B * K). Scalar float32."""
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / tau, axis=-1)
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / tau, axis=-1)
    return jnp.sum(jnp.exp(t) * (t - s)) * (tau * tau) / student_logits.size


def hard_distillation(student_logits: Array, teacher_logits: Array) -> Array:
    """DeiT's hard term: mean cross-entropy of the student's logits against the teacher's argmax."""
    labels = jnp.argmax(teacher_logits, axis=-1)
    return optax.softmax_cross_entropy_with_integer_labels(student_logits.astype(jnp.float32),
                                                           labels).mean()


def deit_loss(logits_cls: Array, logits_dist: Array, targets: Array, teacher_logits: Array | None,
              kind: str, alpha: float, tau: float) -> tuple[Array, Array, Array]:
    """(total, base CE, distillation term) of DeiT's DistillationLoss; `targets` (B, K) are the
    base criterion's class probabilities (one-hot, smoothed or mixed). kind: hard | soft | none
    (the base criterion alone; logits_dist and teacher_logits are not read)."""
    base = optax.softmax_cross_entropy(logits_cls.astype(jnp.float32), targets).mean()
    if kind == "none":
        return base, base, jnp.zeros((), jnp.float32)
    if kind == "hard":
        distill = hard_distillation(logits_dist, teacher_logits)
    elif kind == "soft":
        distill = soft_distillation(logits_dist, teacher_logits, tau)
    else:
        raise ValueError(f"unknown distillation type {kind!r}; use hard, soft or none")
    return (1.0 - alpha) * base + alpha * distill, base, distill


# ------------------------------------------------------------------------------ TinyMIM

def log_relations(q: Array, k: Array, v: Array, heads: int) -> tuple[Array, Array]:
    """q, k, v (B, N, D) -> log R_qk, log R_vv (B, heads, N, N) float32, with d_h = D / heads."""
    b, n, d = q.shape
    if d % heads:
        raise ValueError(f"relations over {heads} heads need a width divisible by {heads}; got {d}")
    hd = d // heads
    q, k, v = (x.astype(jnp.float32).reshape(b, n, heads, hd) for x in (q, k, v))
    scale = hd ** -0.5
    qk = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=jax.lax.Precision.HIGHEST) * scale
    vv = jnp.einsum("bqhd,bkhd->bhqk", v, v, precision=jax.lax.Precision.HIGHEST) * scale
    return jax.nn.log_softmax(qk, axis=-1), jax.nn.log_softmax(vv, axis=-1)


def relation_kl(log_teacher: Array, log_student: Array) -> Array:
    """Per-example KL(teacher || student) of (B, H, N, N) log-relations: summed over the keys,
    averaged over the heads and the queries -> (B,)."""
    kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
    return kl.mean(axis=(1, 2))
