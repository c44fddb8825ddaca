"""Pictures: MAE reconstructions (more kinds to come: attention maps, correspondences, curves).

Host-side numpy only (no jax): callers pass arrays they fetched with jax.device_get.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

GRAY = 0.5          # masked patches in the "masked" panel, in [0, 1] display units
MIN_SIDE = 96       # default upscaling: small images (28x28 digits) become at least this tall
NORM_PIX_EPS = 1e-6  # as MAE's norm_pix_loss


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


def _patchify(images: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """(B, H, W, C) -> (B, L, ph*pw*C); the MAE order (row, column, channel)."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def _unpatchify(x: np.ndarray, ph: int, pw: int, gh: int, gw: int, c: int) -> np.ndarray:
    b = x.shape[0]
    x = x.reshape(b, gh, gw, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * ph, gw * pw, c)


def _to_display(x: np.ndarray, mean: Sequence[float] | float, std: Sequence[float] | float
                ) -> np.ndarray:
    """Normalised (B, H, W, C) -> [0, 1] pixels: x * std + mean, clipped."""
    mean_a = np.asarray(mean, np.float32).reshape(-1)
    std_a = np.asarray(std, np.float32).reshape(-1)
    return np.clip(x * std_a + mean_a, 0.0, 1.0)


def mae_grid(images: np.ndarray, pred: np.ndarray, mask: np.ndarray,
             patch_size: int | Sequence[int], mean: Sequence[float] | float = 0.0,
             std: Sequence[float] | float = 1.0, norm_pix_loss: bool = False,
             scale: int | None = None) -> np.ndarray:
    """MAE reconstruction picture: one row per image, [original | masked | reconstruction].

    images: (B, H, W, C) normalised as the model saw them, C in {1, 3}.
    pred: (B, L, ph*pw*C) the decoder's prediction; mask: (B, L), 1 = removed patch.
    mean, std: the normalisation (x / 255 - mean) / std, per channel or one value.
    norm_pix_loss: pred is in per-patch normalised units; it is mapped back with the mean and
        (unbiased) variance of each target patch, as MAE's visualisation does.
    scale: nearest-neighbour upscaling factor; None picks the smallest with H*scale >= 96.
    The reconstruction shows the original pixels on visible patches and the prediction on
    masked ones; the masked panel shows masked patches in gray.
    Returns uint8 (B*H*scale, 3*W*scale, 3).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, H, W, C) with C in (1, 3); got {images.shape}.")
    b, h, w, c = images.shape
    ph, pw = _pair(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {ph}x{pw}.")
    gh, gw = h // ph, w // pw
    pred = np.asarray(pred, np.float32)[:b]
    mask = np.asarray(mask, np.float32)[:b] > 0.5
    if pred.shape != (b, gh * gw, ph * pw * c) or mask.shape != (b, gh * gw):
        raise ValueError(f"pred {pred.shape} / mask {mask.shape} do not match {b} images of "
                         f"{gh}x{gw} patches of {ph}x{pw}x{c}.")

    target = _patchify(images, ph, pw)
    if norm_pix_loss:
        mu = target.mean(-1, keepdims=True)
        var = target.var(-1, ddof=1, keepdims=True)
        pred = pred * np.sqrt(var + NORM_PIX_EPS) + mu
    recon = _unpatchify(np.where(mask[..., None], pred, target), ph, pw, gh, gw, c)
    pixel_mask = _unpatchify(np.broadcast_to(mask[..., None], target.shape).astype(np.float32),
                             ph, pw, gh, gw, c) > 0.5

    original = _to_display(images, mean, std)
    masked = np.where(pixel_mask, np.float32(GRAY), original)
    recon = _to_display(recon, mean, std)
    panels = np.concatenate([original, masked, recon], axis=2)       # (B, H, 3W, C)
    grid = panels.reshape(b * h, 3 * w, c)
    if c == 1:
        grid = np.repeat(grid, 3, axis=-1)
    if scale is None:
        scale = max(1, math.ceil(MIN_SIDE / h))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)  # nearest: crisp pixels
    return np.round(grid * 255.0).astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> str:
    """Writes a uint8 (H, W), (H, W, 1) or (H, W, 3) array as a PNG (creating the folder)."""
    from PIL import Image  # imported here: only picture writers need PIL

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"save_png wants uint8 pixels, got {array.dtype}; scale to [0, 255] first.")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
