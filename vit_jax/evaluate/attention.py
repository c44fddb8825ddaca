"""Attention maps of a ViT: the per-layer attention weights, the class token's attention over the
patches, and attention rollout (Abnar & Zuidema 2020).

    weights = attention_weights(model, variables, images)      # [(B, H, N, N)] one per block
    maps = cls_attention(weights[-1], model)                    # (B, H, h, w), last layer
    roll = attention_rollout(weights, model)                    # (B, h, w), all layers

The weights are the softmax probabilities layers.Attention sows when the "intermediates"
collection is mutable (the same numbers as the fast path computes); N = prefix tokens + h * w.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vit_jax.models.vit import ViT

Array = jax.Array


def attention_weights(model: ViT, variables: Any, images: Array) -> list[np.ndarray]:
    """Softmax attention of every block, first to last: a list of (B, H, N, N) float32 arrays."""
    if not isinstance(model, ViT):
        raise ValueError(f"attention maps are defined here for ViT backbones, got {type(model).__name__}.")
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, images)
    inter = state["intermediates"]
    if model.scan:   # one "blocks" entry whose arrays have a leading depth axis
        stacked = np.asarray(inter["blocks"]["attn"]["attn_weights"][0])
        return [stacked[i] for i in range(stacked.shape[0])]
    return [np.asarray(inter[f"blocks_{i}"]["attn"]["attn_weights"][0]) for i in range(model.depth)]


def _grid(model: ViT, n_tokens: int) -> tuple[int, int]:
    n = n_tokens - model.num_prefix_tokens
    gh, gw = model.base_grid
    if gh * gw == n:
        return gh, gw
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"cannot lay {n} patch tokens on a grid; pass images of the model's size.")
    return side, side


def cls_attention(weights: np.ndarray, model: ViT) -> np.ndarray:
    """(B, H, N, N) weights of one layer -> (B, H, h, w): how much the class token attends to
    each patch, per head. Needs a class token."""
    if not model.class_token:
        raise ValueError("cls_attention needs a model with a class token; use attention_rollout.")
    b, h, n, _ = weights.shape
    gh, gw = _grid(model, n)
    return np.asarray(weights)[:, :, 0, model.num_prefix_tokens:].reshape(b, h, gh, gw)


def attention_rollout(weights: list[np.ndarray], model: ViT) -> np.ndarray:
    """Attention rollout: heads averaged, the residual added as 0.5 I + 0.5 A, rows renormalised,
    multiplied over the layers; the class token's row (or, without one, the mean over tokens)
    over the patches. -> (B, h, w)."""
    joint = None
    for w in weights:
        a = np.asarray(w, np.float64).mean(axis=1)                    # (B, N, N)
        a = 0.5 * a + 0.5 * np.eye(a.shape[-1])[None]
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a if joint is None else a @ joint
    b, n, _ = joint.shape
    gh, gw = _grid(model, n)
    p = model.num_prefix_tokens
    row = joint[:, 0, p:] if model.class_token else joint[:, p:, p:].mean(axis=1)
    return row.reshape(b, gh, gw).astype(np.float32)
