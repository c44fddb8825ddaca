"""Random affine warps of digits: rotation, translation, scale and shear about the image centre.

The small-data recipes for digits (LeCun et al.'s distortions; torchvision's RandomAffine, which
the MNIST baselines of the CCT / CNN comparisons use) teach the invariances a 4,000-image training
set cannot show: a digit drawn a little tilted, slanted, larger or off-centre is the same digit.
Spec: "random_affine(10, (0.1, 0.1), (0.9, 1.1), 10)|normalize('mnist')". DINO's shape ops
(vit_jax/data/multicrop.py, rotate / shear) warp through `affine_pil` too.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vit_jax.data.pil_image import from_pil, to_pil


def affine_pil(im: Image.Image, angle: float, translate: tuple[float, float] = (0.0, 0.0),
               scale: float = 1.0, shear: float = 0.0) -> Image.Image:
    """Warp `im` about its centre, bilinear, fill 0: x' = scale * R(angle) S(shear) (x - c) + c + t.

    angle and shear in degrees (S shears x by tan(shear) * y); translate (tx, ty) in pixels.
    PIL's pixel i covers [i, i + 1), so the centre c is (W / 2, H / 2).
    """
    a, t = math.radians(angle), math.tan(math.radians(shear))
    fwd = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1.0, t], [0.0, 1.0]])
    inv = np.linalg.inv(fwd * scale)   # PIL wants the inverse map, output -> input
    c = np.array([im.width / 2, im.height / 2])
    off = c - inv @ (c + np.asarray(translate, dtype=np.float64))
    return im.transform(im.size, Image.Transform.AFFINE,
                        (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
                        resample=Image.Resampling.BILINEAR, fillcolor=0)


def sample_affine(rng: np.random.Generator, hw: tuple[int, int], degrees: float,
                  translate: tuple[float, float], scale: tuple[float, float], shear: float
                  ) -> tuple[float, tuple[float, float], float, float]:
    """(angle, (tx, ty), scale, shear) as RandomAffine draws them: angle ~ U(-degrees, degrees),
    tx ~ round(U(-translate[0] W, translate[0] W)) (ty likewise with H), scale ~ U(scale),
    shear ~ U(-shear, shear)."""
    h, w = hw
    angle = float(rng.uniform(-degrees, degrees))
    tx = float(round(rng.uniform(-translate[0] * w, translate[0] * w)))
    ty = float(round(rng.uniform(-translate[1] * h, translate[1] * h)))
    s = float(rng.uniform(*scale))
    sh = float(rng.uniform(-shear, shear))
    return angle, (tx, ty), s, sh


def random_affine(img: np.ndarray, degrees: float = 10.0, translate: tuple[float, float] = (0.1, 0.1),
                  scale: tuple[float, float] = (0.9, 1.1), shear: float = 0.0, *,
                  rng: np.random.Generator) -> np.ndarray:
    """(H, W, C) uint8 -> the same, warped by one draw of `sample_affine` (uncovered pixels 0)."""
    im = to_pil(img)
    return from_pil(affine_pil(im, *sample_affine(rng, img.shape[:2], degrees, translate, scale, shear)))
