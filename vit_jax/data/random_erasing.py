"""Random erasing (Zhong et al. 2020), as MAE's and CCT's fine-tuning recipes use it (timm's
RandomErasing: probability 0.25, mode "pixel", one box).

It runs on the NORMALISED image (after `normalize`, the one op allowed there), so its noise is
N(0, 1) in normalised units like timm's, which erases the normalised tensor. Spec:
"...|normalize('mnist')|random_erasing(0.25)".
"""
from __future__ import annotations

import math

import numpy as np

MODES = ("pixel", "rand", "const")


def random_erasing(img: np.ndarray, p: float = 0.25, scale: tuple[float, float] = (0.02, 1 / 3),
                   ratio: tuple[float, float] = (0.3, 1 / 0.3), mode: str = "pixel", *,
                   rng: np.random.Generator) -> np.ndarray:
    """(H, W, C) float32 normalised image -> the same with, with probability p, one box replaced.

    The box: area fraction ~ U(scale), aspect (h / w) log-uniform in ratio, at a uniform position;
    up to 10 draws until it fits strictly inside the image (none fits: unchanged). Fill: "pixel"
    N(0, 1) per pixel and channel, "rand" N(0, 1) per channel, "const" 0 (the mean colour).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    if rng.random() >= p:
        return img
    h_img, w_img, c = img.shape
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = rng.uniform(*scale) * h_img * w_img
        aspect = math.exp(rng.uniform(*log_ratio))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if 0 < h < h_img and 0 < w < w_img:
            top = int(rng.integers(0, h_img - h + 1))
            left = int(rng.integers(0, w_img - w + 1))
            out = np.array(img, dtype=np.float32, copy=True)
            if mode == "pixel":
                fill = rng.standard_normal((h, w, c))
            elif mode == "rand":
                fill = rng.standard_normal((1, 1, c))
            else:
                fill = 0.0
            out[top:top + h, left:left + w, :] = fill
            return out
    return img
