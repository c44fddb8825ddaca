"""DINO's colour ops (vit_jax.data.color_ops), each against PIL / torchvision's definition or a
closed form: brightness, contrast, saturation, hue, the jitter's random order and factor ranges,
grayscale, Gaussian blur, solarize. Split from tests/test_multicrop.py, which tests the chain."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tests.test_multicrop import _img, _rng
from vit_jax.data import color_ops as C
from vit_jax.data import transforms as T

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, the weights of PIL's "L"

# ----------------------------------------------------------------------- colour jitter parts
# 16 px goes through Image.blend, 160 px through a lookup table (Image.point): same pixels
@pytest.mark.parametrize("size", [16, 160])
@pytest.mark.parametrize("f", [0.0, 0.6, 1.0, 1.37])
def test_brightness_multiplies_and_clips(f, size):
    x = _img(size, size, 3)
    out = C.adjust_brightness(x, f)
    np.testing.assert_array_equal(out, np.clip(np.floor(x * np.float32(f)), 0, 255))
    np.testing.assert_array_equal(out, np.asarray(ImageEnhance.Brightness(
        Image.fromarray(x)).enhance(f)))  # PIL (torchvision's PIL path) agrees exactly


@pytest.mark.parametrize("size", [16, 160])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("f", [0.0, 0.6, 1.4])
def test_contrast_blends_with_the_mean_luma(c, f, size):
    x = _img(size, size, c, seed=2)
    out = C.adjust_contrast(x, f)
    luma = x[..., 0] if c == 1 else x @ LUMA
    m = np.floor(luma.mean() + 0.5)
    want = np.clip(np.floor(m + f * (x.astype(np.float64) - m)), 0, 255)
    assert np.abs(out.astype(int) - want).max() <= 1  # luma rounded by PIL vs here
    pil = ImageEnhance.Contrast(T.to_pil(x)).enhance(f)
    np.testing.assert_array_equal(out, T.from_pil(pil))
    if f == 0.0:
        assert len(np.unique(out)) == 1


@pytest.mark.parametrize("f", [0.0, 0.5, 1.0, 1.2])
def test_saturation_blends_with_the_gray(f):
    x = _img(16, 16, 3, seed=3)
    out = C.adjust_saturation(x, f).astype(int)
    gray = np.rint(x @ LUMA)[..., None]
    want = np.clip(gray + f * (x - gray), 0, 255)
    assert np.abs(out - want).max() <= 2  # two truncations / roundings apart
    if f == 1.0:
        np.testing.assert_array_equal(out, x)
    gray1 = _img(8, 8, 1)
    assert C.adjust_saturation(gray1, 0.0) is gray1 and C.adjust_hue(gray1, 0.3) is gray1


def test_hue_rotates_the_colour_wheel():
    # a third of a turn (85 / 255 exactly) maps (r, g, b) -> (b, r, g): red -> green -> blue
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 100, 50], [128, 128, 128],
                     [0, 0, 0], [255, 255, 255]], np.uint8)[None]
    np.testing.assert_array_equal(C.adjust_hue(cols, 1 / 3), cols[..., [2, 0, 1]])
    np.testing.assert_array_equal(C.adjust_hue(cols, -1 / 3), cols[..., [1, 2, 0]])
    # against colorsys on random colours (PIL's HSV has 8-bit hue steps: a few levels apart)
    x = _img(12, 12, 3, seed=4)
    for f in (0.0, 0.1, -0.1, 0.45):
        fq = round(f * 255) / 255
        ref = np.array([[colorsys.hsv_to_rgb((h + fq) % 1, s, v) for h, s, v in
                         (colorsys.rgb_to_hsv(*(p / 255)) for p in row)] for row in x]) * 255
        d = np.abs(C.adjust_hue(x, f) - ref)
        assert d.mean() < 1.5 and d.max() <= 10, (f, d.mean(), d.max())


def _replay_jitter(img, seed, b, c, s, h):
    """color_jitter recomposed from its documented draws: order, then the factors."""
    r = _rng(seed)
    order = r.permutation(4)
    factors = [r.uniform(max(0, 1 - v), 1 + v) if v > 0 else None for v in (b, c, s)]
    factors.append(r.uniform(-h, h) if h > 0 else None)
    ops = (C.adjust_brightness, C.adjust_contrast, C.adjust_saturation, C.adjust_hue)
    for k in order:
        if factors[k] is not None:
            img = ops[k](img, factors[k])
    return img, order, factors


def test_color_jitter_random_order_and_factor_ranges():
    x = _img(12, 12, 3, seed=5)
    orders = set()
    for seed in range(12):
        want, order, _ = _replay_jitter(x, seed, 0.4, 0.4, 0.2, 0.1)
        np.testing.assert_array_equal(C.color_jitter(x, _rng(seed), 0.4, 0.4, 0.2, 0.1), want)
        orders.add(tuple(order))
    assert len(orders) > 6  # the order really is random
    # brightness only: out = floor(f x) with f ~ U(0.6, 1.4); read f back from a dark image
    dark = np.random.default_rng(0).integers(50, 150, (16, 16, 1), dtype=np.uint8)
    fs = [C.color_jitter(dark, _rng(s), 0.4, 0, 0, 0).sum() / dark.sum() for s in range(200)]
    assert 0.59 < min(fs) < 0.65 and 1.35 < max(fs) < 1.41
    # a strength above 1 clamps the low end at 0: f ~ U(0, 2.5)
    fs = [C.color_jitter(dark, _rng(s), 1.5, 0, 0, 0).sum() / dark.sum() for s in range(200)]
    assert min(fs) < 0.1 and max(fs) > 1.5


def test_color_jitter_on_one_channel():
    g = _img(12, 12, 1, seed=6)
    np.testing.assert_array_equal(C.color_jitter(g, _rng(), 0, 0, 0.9, 0.5), g)
    assert C.color_jitter(g, _rng(), 0.4, 0.4, 0.2, 0.1).shape == g.shape


# ---------------------------------------------------------------------------- other ops
def test_random_grayscale_uses_601_luma_and_keeps_channels():
    x = _img(16, 16, 3, seed=7)
    out = C.random_grayscale(x, _rng(), p=1.0)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0] - x @ LUMA).max() <= 1
    np.testing.assert_array_equal(out[..., :1], T.to_gray(x))
    assert C.random_grayscale(x, _rng(), p=0.0) is x
    g = _img(8, 8, 1)
    assert C.random_grayscale(g, _rng(), p=1.0) is g
    hits = sum(C.random_grayscale(x, _rng(s), p=0.2) is not x for s in range(500))
    assert 70 < hits < 130  # ~ 100 = 0.2 * 500


def test_gaussian_blur():
    from scipy import ndimage  # scipy comes with scikit-learn, an install requirement
    x = _img(32, 32, 3, seed=8)
    assert C.gaussian_blur(x, _rng(), p=0.0) is x
    np.testing.assert_array_equal(C.gaussian_blur(x, _rng(), 1.0, (0.01, 0.01)), x)  # sigma -> 0
    # against a true Gaussian on a smooth image: PIL runs 3 box passes, which fit it to a level
    # or two away from the border (where the two handle the edge differently)
    yy, xx = np.mgrid[:48, :48]
    smooth = (127 + 60 * np.sin(xx / 4.0) * np.cos(yy / 5.0)).astype(np.uint8)[..., None]
    for sigma in (0.5, 1.0, 2.0):
        out = C.gaussian_blur(smooth, _rng(), 1.0, (sigma, sigma))[..., 0]
        ref = ndimage.gaussian_filter(smooth[..., 0].astype(float), sigma, mode="nearest")
        d = np.abs(out - ref)[6:-6, 6:-6]
        assert d.max() <= 2.5 and d.mean() < 1.0, (sigma, d.max(), d.mean())
    # the sigma is drawn in the range: a wider range blurs noise more on average
    weak = np.mean([C.gaussian_blur(x, _rng(s), 1.0, (0.3, 0.5)).std() for s in range(5)])
    strong = np.mean([C.gaussian_blur(x, _rng(s), 1.0, (1.5, 2.0)).std() for s in range(5)])
    assert strong < weak < x.std()


def test_solarize_inverts_the_bright_pixels():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    np.testing.assert_array_equal(C.solarize(x, _rng(), 1.0), np.where(x >= 128, 255 - x, x))
    np.testing.assert_array_equal(C.solarize(x, _rng(), 1.0, threshold=200),
                                  np.where(x >= 200, 255 - x, x))
    assert C.solarize(x, _rng(), 0.0) is x
