"""The host images' one convention, uint8 (H, W, C) with C in {1, 3}, and its PIL round trip.

PIL wants "L" (H, W) or "RGB" (H, W, 3); these keep the trailing channel axis. Every PIL-based op
(transforms, random_affine, color_ops, multicrop) converts through here.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def check_image(img: np.ndarray) -> np.ndarray:
    """img itself if it is uint8 (H, W, 1|3); else a ValueError naming what it is."""
    if img.ndim != 3 or img.shape[-1] not in (1, 3) or img.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 1|3) image, got {img.dtype} {img.shape}")
    return img


def to_pil(img: np.ndarray) -> Image.Image:
    img = check_image(img)
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def from_pil(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
