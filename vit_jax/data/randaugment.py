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
_ENHANCERS = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
              "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}


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
        mask = (0xFF << (8 - int(level * 4))) & 0xFF  # own LUT: PIL's posterize rejects 0 bits
        return im.point([i & mask for i in range(256)] * len(im.getbands()))
    if name == "Solarize":  # threshold 0..256: pixels >= threshold are inverted
        return ImageOps.solarize(im, int(level * 256))
    if name == "SolarizeAdd":  # add 0..110 to pixels below 128
        add = int(level * 110)
        lut = [min(255, i + add) if i < 128 else i for i in range(256)]
        return im.point(lut * len(im.getbands()))
    if name in _ENHANCERS:  # factor 0.1..1.9, 1 = identity
        return _ENHANCERS[name](im).enhance(level * 1.8 + 0.1)
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
        raise ValueError(f"unknown RandAugment op {name!r}; valid: {', '.join(RAND_AUGMENT_OPS)}")
    return im.transform(im.size, Image.AFFINE, coeffs, resample=resample, fillcolor=fill)


def rand_augment_pil(im: Image.Image, num_ops: int = 2, magnitude: float = 9,
                     magnitude_std: float = 0.5, *, rng: np.random.Generator,
                     fill: int | tuple[int, ...] = 128, prob: float = 0.5,
                     ops: Sequence[str] = RAND_AUGMENT_OPS) -> Image.Image:
    """The RandAugment policy on a PIL image; see vit_jax.data.transforms.rand_augment."""
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
