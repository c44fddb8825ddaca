"""timm-style RandAugment on PIL images: the op set, timm's level -> argument maps, and the policy
(how many ops, which, how strong), deterministic given a ``np.random.Generator``.

Works on PIL images only, so it needs nothing from vit_jax.data.transforms; transforms wraps it as
the array op ``rand_augment`` (spec name ``randaug``) and re-exports the names here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# RandAugment op set of timm's rand_augment_transform (the non-"Increasing" variants).
RAND_AUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                    "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX",
                    "ShearY", "TranslateX", "TranslateY")
# timm's "inc1" set (rand-m9-mstd0.5-inc1, CCT's CIFAR recipe): posterize, solarize and the four
# enhancers replaced by variants that grow stronger with the magnitude (timm's *Increasing ops).
RAND_AUGMENT_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                               "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
                               "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                               "ShearX", "ShearY", "TranslateX", "TranslateY")
_ENHANCERS = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
              "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}


def _posterize(im: Image.Image, bits: int) -> Image.Image:
    """Keep the `bits` (0..8) high bits of every channel (own LUT: PIL's posterize rejects 0)."""
    mask = (0xFF << (8 - bits)) & 0xFF
    return im.point([i & mask for i in range(256)] * len(im.getbands()))


def apply_op(im: Image.Image, name: str, level: float, rng: np.random.Generator,
             fill: int | tuple[int, ...]) -> Image.Image:
    """One RandAugment op at level = magnitude / 10 in [0, 1] (timm's level -> argument maps)."""
    if name == "AutoContrast":
        return ImageOps.autocontrast(im)
    if name == "Equalize":
        return ImageOps.equalize(im)
    if name == "Invert":
        return ImageOps.invert(im)
    if name == "Posterize":  # keep int(4 * level) high bits: 0..4, lower is stronger (timm)
        return _posterize(im, int(level * 4))
    if name == "PosterizeIncreasing":  # keep 4 - int(4 * level) bits: stronger with the level
        return _posterize(im, 4 - int(level * 4))
    if name == "Solarize":  # threshold 0..256: pixels >= threshold are inverted
        return ImageOps.solarize(im, int(level * 256))
    if name == "SolarizeIncreasing":  # threshold 256 - int(256 * level): level 1 inverts all
        return ImageOps.solarize(im, 256 - int(level * 256))
    if name == "SolarizeAdd":  # add 0..110 to pixels below 128
        add = int(level * 110)
        lut = [min(255, i + add) if i < 128 else i for i in range(256)]
        return im.point(lut * len(im.getbands()))
    if name in _ENHANCERS:  # factor 0.1..1.9, 1 = identity
        return _ENHANCERS[name](im).enhance(level * 1.8 + 0.1)
    if name.endswith("Increasing") and name[:-len("Increasing")] in _ENHANCERS:
        # factor 1 +- 0.9 level (random sign), at least 0.1: 1 = identity, stronger with the level
        sign = -1.0 if rng.random() < 0.5 else 1.0
        return _ENHANCERS[name[:-len("Increasing")]](im).enhance(max(0.1, 1.0 + sign * 0.9 * level))
    # Geometric ops: random sign, random bilinear/bicubic as timm, constant fill outside.
    sign = -1.0 if rng.random() < 0.5 else 1.0
    resample = Image.BILINEAR if rng.random() < 0.5 else Image.BICUBIC
    if len(im.getbands()) > 1 and np.isscalar(fill):
        fill = (int(fill),) * len(im.getbands())
    if name == "Rotate":  # up to 30 degrees
        return im.rotate(sign * level * 30.0, resample=resample, fillcolor=fill)
    v = sign * level * 0.3  # shear up to 0.3
    if name == "TranslateX":  # up to 45% of the width / height
        coeffs = (1, 0, sign * level * 0.45 * im.size[0], 0, 1, 0)
    elif name == "TranslateY":
        coeffs = (1, 0, 0, 0, 1, sign * level * 0.45 * im.size[1])
    elif name == "ShearX":
        coeffs = (1, v, 0, 0, 1, 0)
    elif name == "ShearY":
        coeffs = (1, 0, 0, v, 1, 0)
    else:
        valid = dict.fromkeys(RAND_AUGMENT_OPS + RAND_AUGMENT_INCREASING_OPS)
        raise ValueError(f"unknown RandAugment op {name!r}; valid: {', '.join(valid)}")
    return im.transform(im.size, Image.AFFINE, coeffs, resample=resample, fillcolor=fill)


def rand_augment_pil(im: Image.Image, num_ops: int = 2, magnitude: float = 9,
                     magnitude_std: float = 0.5, *, rng: np.random.Generator,
                     fill: int | tuple[int, ...] = 128, prob: float = 0.5,
                     ops: Sequence[str] | None = None, increasing: bool = False) -> Image.Image:
    """The RandAugment policy on a PIL image; see vit_jax.data.transforms.rand_augment."""
    if ops is None:
        ops = RAND_AUGMENT_INCREASING_OPS if increasing else RAND_AUGMENT_OPS
    for k in rng.integers(0, len(ops), size=num_ops):
        if rng.random() >= prob:
            continue
        m = magnitude
        if magnitude_std == float("inf"):
            m = rng.uniform(0.0, magnitude)
        elif magnitude_std > 0:
            m = rng.normal(magnitude, magnitude_std)
        im = apply_op(im, ops[int(k)], float(np.clip(m, 0.0, 10.0)) / 10.0, rng, fill)
    return im
