"""On-device Mixup / CutMix (timm ``Mixup`` in "batch" mode) and smoothed one-hot targets.

Pure jax.numpy: jit-friendly, static shapes, no Python branch on traced values. The alphas are
Python floats (config constants; static under jit), so *whether* mixup/cutmix can happen is
decided at trace time; ``switch_prob`` and ``prob`` may be traced, and so are the method drawn
and lam.

Batch mode: one lam for the whole batch; example i is mixed with example B-1-i (the batch flipped),
or with ``groups`` > 1 with its mirror inside its block of B / groups rows: objectives pass the
number of devices the batch is sharded over (sharding.batch_shard_count), so every pair lies on
one device; a whole-batch flip is a global permutation that XLA lowers to collective-permutes.
groups = 1 is timm's pairing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def one_hot_smooth(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """(B,) int -> (B, K) float32: on = 1 - s + s/K, off = s/K for s = smoothing; rows sum to 1."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int
               ) -> tuple[jax.Array, jax.Array]:
    """timm's rand_bbox + correct_lam -> (inside (H, W) bool mask, lam corrected by its area).

    Box side = int(side * sqrt(1 - lam)), centre uniform over the image, clipped at the border, so
    the pasted area can be smaller than 1 - lam; the corrected lam is 1 - box area / (H * W).
    """
    ry, rx = jax.random.split(rng)
    cut = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * cut).astype(jnp.int32)
    cut_w = jnp.floor(width * cut).astype(jnp.int32)
    cy = jax.random.randint(ry, (), 0, height)
    cx = jax.random.randint(rx, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    lam_box = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    return inside, lam_box


def flip_within(x: jax.Array, groups: int = 1) -> jax.Array:
    """(B, ...) -> each of `groups` contiguous blocks of B / groups rows reversed (1: x[::-1])."""
    b = x.shape[0]
    if groups < 1 or b % groups:
        raise ValueError(f"mixup pairs rows within {groups} blocks, which must divide the batch of {b}")
    return x.reshape((groups, b // groups) + x.shape[1:])[:, ::-1].reshape(x.shape)


def mixup_cutmix(rng: jax.Array, images: jax.Array, labels_onehot: jax.Array,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 prob: float = 1.0, groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """Mix a batch with its flip (within `groups` blocks, see the module docstring).
    images (B, H, W, C) float, labels_onehot (B, K) -> same shapes.

    With probability ``prob`` the batch is mixed, otherwise returned as is (lam = 1). Mixup:
    lam ~ Beta(mixup_alpha, mixup_alpha), x = lam x + (1 - lam) x_flip. CutMix: lam ~
    Beta(cutmix_alpha, cutmix_alpha), a box of x_flip is pasted and lam is corrected by the
    box's actual area. Both alphas > 0: CutMix with probability ``switch_prob``. Targets are
    lam y + (1 - lam) y_flip with the effective lam, so they keep summing to 1.
    """
    use_mixup, use_cutmix = mixup_alpha > 0, cutmix_alpha > 0
    if not (use_mixup or use_cutmix):
        return images, labels_onehot
    _, h, w, _ = images.shape
    k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)

    # Which method, decided on device (a traced bool) unless only one alpha is on.
    if use_mixup and use_cutmix:
        cutmix_on = jax.random.uniform(k_switch) < switch_prob
    else:
        cutmix_on = jnp.asarray(use_cutmix)
    lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if use_mixup else jnp.float32(1)
    lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if use_cutmix else jnp.float32(1)
    inside, lam_box = cutmix_box(k_box, lam_cut.astype(jnp.float32), h, w)

    # One per-pixel weight on the original covers both methods: lam everywhere for mixup,
    # 0 inside the box / 1 outside for cutmix. No lax.cond: both are cheap (H, W) maps.
    apply = jax.random.uniform(k_apply) < prob
    weight = jnp.where(cutmix_on, (~inside).astype(jnp.float32), lam_mix.astype(jnp.float32))
    weight = jnp.where(apply, weight, 1.0)
    lam = jnp.where(apply, jnp.where(cutmix_on, lam_box, lam_mix.astype(jnp.float32)), 1.0)

    flipped = flip_within(images, groups)
    wgt = weight[None, :, :, None].astype(images.dtype)
    mixed = images * wgt + flipped * (1 - wgt)
    targets = lam * labels_onehot + (1.0 - lam) * flip_within(labels_onehot, groups)
    return mixed, targets.astype(labels_onehot.dtype)
