"""DINO's photometric augmentations (vit_jax/data/multicrop.py chains them), deterministic given
an rng, with torchvision's PIL semantics: brightness, contrast and saturation are ImageEnhance
blends (float32, truncated to uint8), hue shifts the 8-bit H of PIL's HSV, grayscale is PIL's "L",
the blur is PIL's GaussianBlur (radius = standard deviation), solarize inverts x >= threshold.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFilter

from vit_jax.data import transforms

_IDENTITY = np.arange(256, dtype=np.float32)


def coin(rng: np.random.Generator, p: float) -> bool:
    """True with probability p. p of 0 or 1 draws nothing, so a switched-off op leaves the
    random stream of the other ops as if it did not exist."""
    if p <= 0:
        return False
    if p >= 1:
        return True
    return bool(rng.random() < p)


def as_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) as is; a float image in [0, 1] -> uint8 by rounding x * 255."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        lo, hi = float(image.min(initial=0.0)), float(image.max(initial=0.0))
        if not (lo >= 0 and hi <= 1):  # a [0, 255] float image would turn white; NaN fails too
            raise ValueError(f"a float image must lie in [0, 1], got values in [{lo}, {hi}]")
        image = np.rint(image * 255.0).astype(np.uint8)
    return transforms._check(image)


# Each op exists twice: a private one on PIL images, which multi_crop chains without leaving PIL
# (every numpy <-> PIL copy costs about as much as a cheap op), and a public one on uint8 arrays
# (H, W, C) that wraps it, for tests and other callers. Both give the same pixels.
_POINT_MIN_PIXELS = 128 * 128


def _blend_with(im: Image.Image, value: int, factor: float) -> Image.Image:
    """PIL's ImageEnhance with a constant degenerate image: value + factor * (x - value), computed
    in float32, clipped and truncated to uint8, as Image.blend stores it.

    The same pixels two ways, whichever is cheaper: Image.blend costs per pixel, Image.point a
    fixed ~40 us (Pillow rounds the 256-entry table per band in Python) plus a cheaper lookup."""
    if im.width * im.height < _POINT_MIN_PIXELS:
        degenerate = Image.new(im.mode, im.size, (value,) * len(im.getbands()))
        return Image.blend(degenerate, im, float(factor))
    v = np.float32(value)
    lut = np.clip(v + np.float32(factor) * (_IDENTITY - v), 0, 255).astype(np.uint8)
    return im.point(lut.tolist() * len(im.getbands()))


def _brightness(im: Image.Image, factor: float) -> Image.Image:
    return _blend_with(im, 0, factor)


def _contrast(im: Image.Image, factor: float) -> Image.Image:
    # PIL's ImageEnhance.Contrast blends with the mean luma rounded to an integer; a histogram
    # gives that mean without a copy of the pixels.
    hist = np.asarray(im.convert("L").histogram() if im.mode != "L" else im.histogram())
    return _blend_with(im, int(hist @ np.arange(256) / hist.sum() + 0.5), factor)


def _saturation(im: Image.Image, factor: float) -> Image.Image:
    if im.mode == "L":
        return im
    return Image.blend(im.convert("L").convert("RGB"), im, float(factor))


def _hue(im: Image.Image, factor: float) -> Image.Image:
    if im.mode == "L":
        return im
    h, s, v = im.convert("HSV").split()
    h = h.point(_hue_lut(int(round(float(factor) * 255)) % 255))
    return Image.merge("HSV", (h, s, v)).convert("RGB")


@functools.lru_cache(maxsize=512)
def _hue_lut(shift: int) -> list[int]:
    # PIL's H runs 0..255 for 0..360 degrees, so 255 is red again: the wheel has 255 steps.
    return [(i + shift) % 255 for i in range(256)]


def draw_jitter(rng: np.random.Generator, brightness: float, contrast: float, saturation: float,
                hue: float) -> tuple[np.ndarray, list[float | None]]:
    """torchvision ColorJitter's draws: the order of the 4 ops (rng.permutation(4)), then a factor
    per op in [max(0, 1 - v), 1 + v] (hue: a shift in [-hue, hue]); None for a strength of 0,
    which draws nothing."""
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1.0 - v), 1.0 + v) if v > 0 else None
               for v in (brightness, contrast, saturation)]
    factors.append(rng.uniform(-hue, hue) if hue > 0 else None)
    return order, factors


def pil_jitter_with(im: Image.Image, order: Any, factors: list[float | None]) -> Image.Image:
    """The four jitter ops in ``order`` with ``factors`` (brightness, contrast, saturation, hue;
    None skips one), as :func:`draw_jitter` gives them."""
    ops = (_brightness, _contrast, _saturation, _hue)
    for k in order:
        if factors[k] is not None:
            im = ops[k](im, factors[k])
    return im


def pil_jitter(im: Image.Image, rng: np.random.Generator, brightness: float, contrast: float,
               saturation: float, hue: float) -> Image.Image:
    return pil_jitter_with(im, *draw_jitter(rng, brightness, contrast, saturation, hue))


def pil_grayscale(im: Image.Image) -> Image.Image:
    return im if im.mode == "L" else im.convert("L").convert("RGB")


def pil_gaussian(im: Image.Image, sigma: float) -> Image.Image:
    """PIL's Gaussian blur, radius = standard deviation ``sigma`` pixels."""
    return im.filter(ImageFilter.GaussianBlur(radius=float(sigma)))


def pil_blur(im: Image.Image, rng: np.random.Generator, sigma_range: tuple[float, float]
             ) -> Image.Image:
    return pil_gaussian(im, rng.uniform(*sigma_range))


@functools.lru_cache(maxsize=16)
def solarize_lut(threshold: int) -> np.ndarray:
    x = np.arange(256)
    lut = np.where(x < threshold, x, 255 - x).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _on_array(op: Callable[..., Image.Image], img: np.ndarray, *args: Any) -> np.ndarray:
    return transforms.from_pil(op(transforms.to_pil(img), *args))


# ----------------------------------------------------------------------- single augmentations
def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """out = clip(floor(factor * x)) (PIL ImageEnhance.Brightness). uint8 (H, W, C) -> same."""
    return _on_array(_brightness, img, factor)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """out = clip(floor(m + factor * (x - m))), m = mean luma rounded to an integer, as PIL's
    ImageEnhance.Contrast. uint8 (H, W, C) -> same."""
    return _on_array(_contrast, img, factor)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's own gray (PIL ImageEnhance.Color); no-op on 1 channel.
    uint8 (H, W, C) -> same."""
    return img if transforms._check(img).shape[-1] == 1 else _on_array(_saturation, img, factor)


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """Rotate hue by ``factor`` turns, factor in [-0.5, 0.5]: the 8-bit H of PIL's HSV moves by
    round(factor * 255) steps around its 255-step wheel. No-op on 1 channel.
    uint8 (H, W, C) -> same.

    torchvision's PIL path (DINO's) truncates the shift and wraps at 256 with uint8 overflow, one
    step off for the pixels that cross red; wrapping at 255 makes a third of a turn an exact
    channel rotation. The 8-bit HSV round trip itself costs up to a few levels per channel, as
    it did in DINO."""
    return img if transforms._check(img).shape[-1] == 1 else _on_array(_hue, img, factor)


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1) -> np.ndarray:
    """torchvision ColorJitter: the four ops in a random order, each with a factor drawn
    uniformly from [max(0, 1 - v), 1 + v] (hue: a shift in [-hue, hue]); a strength of 0 skips
    its op and its draw. Draws: rng.permutation(4), then the factors in the order brightness,
    contrast, saturation, hue. On 1 channel saturation and hue are no-ops (their draws still
    happen). uint8 (H, W, C) -> same."""
    return _on_array(pil_jitter, img, rng, brightness, contrast, saturation, hue)


def random_grayscale(img: np.ndarray, rng: np.random.Generator, p: float = 0.2) -> np.ndarray:
    """With probability p, replace every channel by the ITU-R 601-2 luma (PIL "L"); the channel
    count is kept (a 1-channel image is unchanged). uint8 (H, W, C) -> same."""
    if not coin(rng, p) or transforms._check(img).shape[-1] == 1:
        return img
    return _on_array(pil_grayscale, img)


def gaussian_blur(img: np.ndarray, rng: np.random.Generator, p: float = 0.5,
                  sigma_range: tuple[float, float] = (0.1, 2.0)) -> np.ndarray:
    """With probability p, PIL's Gaussian blur with sigma ~ U(sigma_range) pixels of ``img``
    (edges replicate). uint8 (H, W, C) -> same."""
    return _on_array(pil_blur, img, rng, sigma_range) if coin(rng, p) else img


def solarize(img: np.ndarray, rng: np.random.Generator, p: float = 0.2,
             threshold: int = 128) -> np.ndarray:
    """With probability p, invert pixels >= threshold (x -> 255 - x), as PIL ImageOps.solarize.
    uint8 (H, W, C) -> same."""
    if not coin(rng, p):
        return img
    return np.take(solarize_lut(int(threshold)), transforms._check(img))
