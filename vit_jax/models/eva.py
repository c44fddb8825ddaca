"""EVA-01 (Fang et al. 2022) student: masked feature regression, BEiT-style.

    student = MaskedFeatureStudent(encoder=ViT(num_classes=0, ...), target_dim=768)
    pred = student.apply(variables, images, patch_mask)        # (B, L, target_dim)
    loss = masked_cosine_loss(pred, targets, patch_mask)        # -cos averaged over masked tokens

The encoder sees ALL tokens: the patch embeddings of masked patches are replaced by a learned
mask token before the position embedding is added (unlike MAE, which drops them); after the
final norm a linear head maps every patch token to the teacher's width. Only masked tokens
enter the loss. Parameters: encoder (the ViT backbone), mask_token (1, 1, D), head.
With `with_cls=True` the class token goes through the same head and comes first:
(B, 1 + L, target_dim), for the class-token target that is not EVA's (`pooled_cosine_loss`).

`eva_init` reproduces EVA's initialisation: every Linear / Conv kernel, the tokens and the
learned position embedding ~ N(0, std) truncated to [-std, std] (EVA calls timm's trunc_normal_
with a=-std, b=std), biases 0, and the output projections of block i (attention out, MLP fc2)
divided by sqrt(2 * (i + 1)).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from vit_jax.models.layers import TokenDense
from vit_jax.models.vit import ViT

Array = jax.Array


class MaskedFeatureStudent(nn.Module):
    """ViT encoder + mask token + linear head to the teacher's width. See the module docstring."""
    encoder: ViT
    target_dim: int
    with_cls: bool = False   # also predict from the class token: output (B, 1 + L, target_dim)

    def setup(self) -> None:
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02),
                                     (1, 1, self.encoder.width), self.encoder.param_dtype)
        self.head = TokenDense(self.target_dim, dtype=self.encoder.dtype,
                             param_dtype=self.encoder.param_dtype)

    def __call__(self, images: Array, patch_mask: Array, train: bool = False) -> Array:
        """images (B, H, W, C), patch_mask (B, L) bool (True = masked) -> (B, L, target_dim) f32,
        (B, 1 + L, target_dim) with the class token first when with_cls."""
        enc = self.encoder
        grid = enc._check_images(images)
        expected = (images.shape[0], grid[0] * grid[1])
        if patch_mask.shape != expected:
            raise ValueError(f"patch_mask has shape {patch_mask.shape}; the images have "
                             f"{expected[1]} patches ({grid[0]}x{grid[1]}): expected {expected}.")
        tokens, cls = enc.embed(images, patch_mask=patch_mask, mask_token=self.mask_token)
        x = tokens if cls is None else jnp.concatenate([cls, tokens], axis=1)
        if self.with_cls and cls is None:
            raise ValueError("with_cls=True needs an encoder with a class token (class_token=True).")
        x = enc.encode(x, train)
        x = jnp.concatenate([x[:, :1], x[:, enc.num_prefix_tokens:]], axis=1) if self.with_cls \
            else x[:, enc.num_prefix_tokens:]
        return self.head(x).astype(jnp.float32)


def cosine_per_token(pred: Array, target: Array, eps: float = 1e-8) -> Array:
    """(B, L, K) x (B, L, K) -> (B, L) cosine similarity in float32 (torch's eps clamp on norms)."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    dot = jnp.sum(pred * target, axis=-1)
    norms = jnp.maximum(jnp.linalg.norm(pred, axis=-1), eps) * jnp.maximum(
        jnp.linalg.norm(target, axis=-1), eps)
    return dot / norms


def standardize_targets(target: Array, eps: float = 1e-6) -> Array:
    """(B, L, K) targets -> each of the K channels standardised over the batch's B * L tokens
    (mean 0, variance 1), float32. Not EVA's: every channel counts alike in the cosine and a
    direction shared by all tokens is removed. On mnist5k it made EVA worse (README).
    """
    t = target.astype(jnp.float32)
    mean = jnp.mean(t, axis=(0, 1))
    var = jnp.mean(jnp.square(t - mean), axis=(0, 1))
    return (t - mean) * jax.lax.rsqrt(var + eps)


def masked_cosine_loss(pred: Array, target: Array, patch_mask: Array) -> Array:
    """EVA's loss: -mean of cos(pred, target) over all masked tokens of the batch. Scalar."""
    m = patch_mask.astype(jnp.float32)
    return -jnp.sum(cosine_per_token(pred, target) * m) / jnp.maximum(jnp.sum(m), 1.0)


def per_example_masked_cosine_loss(pred: Array, target: Array, patch_mask: Array) -> Array:
    """(B,) -mean cosine over each example's masked tokens (for evaluation)."""
    m = patch_mask.astype(jnp.float32)
    return -jnp.sum(cosine_per_token(pred, target) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def pooled_cosine_loss(pred_cls: Array, target: Array) -> Array:
    """(B, K) class-token predictions, (B, L, K) targets -> (B,) -cos(pred, mean of the L target
    tokens). Not EVA's (its class token has no target): the teacher's mean token is what a
    mean-pooling teacher classifies from, so the student's class token learns the image's summary.
    """
    return -cosine_per_token(pred_cls[:, None], jnp.mean(target.astype(jnp.float32), axis=1,
                                                         keepdims=True))[:, 0]


_TRUNCATED = ("kernel", "cls_token", "pos_embed", "mask_token")


def eva_init(params: Any, rng: jax.Array, std: float = 0.02) -> Any:
    """EVA's initialisation of a MaskedFeatureStudent's params (see the module docstring).

    Works on the unscanned (blocks_i) and scanned ("blocks", leading depth axis) layouts."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for i, (path, v) in enumerate(sorted(flat.items())):
        if path[-1] in _TRUNCATED:
            v = std * jax.random.truncated_normal(jax.random.fold_in(rng, i), -1.0, 1.0, v.shape,
                                                  jnp.float32).astype(v.dtype)
        elif path[-1] == "bias":
            v = jnp.zeros_like(v)
        if path[-1] == "kernel" and path[-2] in ("out", "fc2"):
            block = next((p for p in path if p.startswith("blocks")), None)
            if block is not None and block.startswith("blocks_"):
                v = v / math.sqrt(2.0 * (int(block.split("_")[1]) + 1))
            elif block == "blocks":   # scanned: leading depth axis
                depth = v.shape[0]
                scale = 1.0 / jnp.sqrt(2.0 * jnp.arange(1, depth + 1, dtype=jnp.float32))
                v = v * scale.reshape((depth,) + (1,) * (v.ndim - 1)).astype(v.dtype)
        out[path] = v
    return traverse_util.unflatten_dict(out)
