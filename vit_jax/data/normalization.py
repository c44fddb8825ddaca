"""The last host op, `normalize`: uint8 pixels -> float32 (x / 255 - mean) / std, and its presets."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vit_jax.data.pil_image import check_image as _check

# Preset (mean, std) in [0, 1] pixel units.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # -> [-1, 1], as the original ViT
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CCT's and timm's CIFAR stats
STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "mnist": (MNIST_MEAN, MNIST_STD),
         "clip": (CLIP_MEAN, CLIP_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD),
         "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
         "none": ((0.0,), (1.0,))}  # "none": x / 255 only


def get_stats(mean: Sequence[float] | str, std: Sequence[float] | None = None
              ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(preset name, None) or (mean, std) -> (mean, std). Presets: see STATS."""
    if isinstance(mean, str):
        if mean not in STATS:
            raise ValueError(f"unknown normalization preset {mean!r}; valid: {', '.join(STATS)}")
        if std is not None:
            raise ValueError(f"give std only with an explicit mean, not with the preset {mean!r}")
        return STATS[mean]
    if std is None:
        raise ValueError(f"mean {tuple(mean)} needs an explicit std (or use a preset name)")
    return tuple(float(m) for m in mean), tuple(float(v) for v in std)


def normalize(img: np.ndarray, mean: Sequence[float] | str = "imagenet",
              std: Sequence[float] | None = None) -> np.ndarray:
    """uint8 (H, W, C) -> float32 (x / 255 - mean) / std. mean may be a preset name (std None).

    A 1-value mean/std broadcasts over any channel count; a 3-value one on a 1-channel image is an
    error (silently making 3 channels would hide a config mistake: use to_rgb first).
    """
    mean, std = get_stats(mean, std)
    mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    c = _check(img).shape[-1]
    for what, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, c):
            raise ValueError(f"{what} {v} does not fit a {c}-channel image (to_rgb / to_gray?)")
    return (img.astype(np.float32) * np.float32(1 / 255) - mean_a) / std_a
