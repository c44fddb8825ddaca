"""DINO's photometric chain on the device (vit_jax.data.photometric): each op against a reference
written from its definition (NumPy, Python's colorsys, scipy's Gaussian filter), the parameter
draws against their closed-form distributions, and the device chain against the host's PIL chain
on the same crops and rows, within the tolerance stated here."""
from __future__ import annotations

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from vit_jax.data import multicrop as M
from vit_jax.data import photometric as P

RGB = np.random.default_rng(0).random((3, 9, 11, 3)).astype(np.float32)
GRAY = np.random.default_rng(1).random((3, 9, 11, 1)).astype(np.float32)
F = jnp.asarray([0.6, 1.0, 1.4])
LUMA = np.asarray(P.LUMA, np.float32)


def _mean_luma(x: np.ndarray) -> np.ndarray:
    g = x @ LUMA if x.shape[-1] == 3 else x[..., 0]
    return g.mean(axis=(1, 2))[:, None, None, None]


@pytest.mark.parametrize("x", [RGB, GRAY], ids=["rgb", "gray"])
def test_brightness_contrast_against_their_definitions(x):
    f = np.asarray(F)[:, None, None, None]
    np.testing.assert_allclose(P.adjust_brightness(jnp.asarray(x), F), np.clip(f * x, 0, 1), atol=1e-6)
    m = _mean_luma(x)
    np.testing.assert_allclose(P.adjust_contrast(jnp.asarray(x), F), np.clip(m + f * (x - m), 0, 1), atol=1e-6)


def test_saturation_blends_with_each_pixels_luma_and_skips_gray():
    f = np.asarray(F)[:, None, None, None]
    g = (RGB @ LUMA)[..., None]
    np.testing.assert_allclose(P.adjust_saturation(jnp.asarray(RGB), F), np.clip(g + f * (RGB - g), 0, 1),
                               atol=1e-6)
    np.testing.assert_array_equal(P.adjust_saturation(jnp.asarray(GRAY), F), GRAY)
    np.testing.assert_array_equal(P.adjust_hue(jnp.asarray(GRAY), F), GRAY)


@pytest.mark.parametrize("shift", [-0.5, -0.1, 0.0, 0.07, 1 / 3])
def test_hue_against_colorsys(shift):
    want = np.empty_like(RGB)
    for idx in np.ndindex(RGB.shape[:3]):
        h, s, v = colorsys.rgb_to_hsv(*RGB[idx])
        want[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    got = P.adjust_hue(jnp.asarray(RGB), jnp.full((3,), shift, jnp.float32))
    np.testing.assert_allclose(got, want, atol=2e-6)
    # a third of a turn is a channel rotation: r, g, b -> b, r, g
    if shift == 1 / 3:
        np.testing.assert_allclose(got, RGB[..., [2, 0, 1]], atol=2e-6)


def test_hue_of_pure_and_gray_colours():
    x = jnp.asarray([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]]])
    got = np.asarray(P.adjust_hue(x, jnp.asarray([0.5])))
    np.testing.assert_allclose(got[0, 0], [[0.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_blur_against_scipy(sigma):
    r = P.blur_radius(2.0)
    want = np.stack([ndimage.gaussian_filter(RGB[i], (sigma, sigma, 0), mode="nearest", radius=(r, r, 0))
                     for i in range(3)])
    got = P.gaussian_blur(jnp.asarray(RGB), jnp.full((3,), sigma, jnp.float32), r)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert P.blur_radius(2.0) == 6 and P.blur_radius(0.01) == 1


def _row(**set_) -> np.ndarray:
    row = np.zeros(P.NUM_PARAMS, np.float32)
    row[P.ORDER_AT:P.ORDER_AT + 4] = np.arange(4)
    row[P.FACTORS_AT:P.FACTORS_AT + 3] = 1.0
    for at, v in set_.items():
        row[getattr(P, at.upper() + "_AT"):getattr(P, at.upper() + "_AT") + np.size(v)] = v
    return row


def test_apply_follows_the_row():
    x = (RGB * 255).round().astype(np.uint8)
    u = x.astype(np.float32) / 255

    def run(*rows: np.ndarray) -> np.ndarray:
        return np.asarray(P.apply(jnp.asarray(x[:len(rows)]), jnp.asarray(np.stack(rows)), 1))

    np.testing.assert_allclose(run(_row(), _row(factors=[0.5, 2.0, 0.0, 0.3])), u[:2], atol=1e-6)  # off
    # the order decides: brightness x2 then contrast x0 (flat at the mean) vs the other way round
    bc = _row(jitter=1, factors=[2.0, 0.0, 1.0, 0.0])
    cb = _row(jitter=1, order=[1, 0, 2, 3], factors=[2.0, 0.0, 1.0, 0.0])
    got = run(bc, cb)
    np.testing.assert_allclose(got[0], np.broadcast_to(_mean_luma(np.clip(2 * u[:1], 0, 1))[0], u[0].shape),
                               atol=1e-6)
    np.testing.assert_allclose(got[1], np.clip(2 * np.broadcast_to(_mean_luma(u[1:2])[0], u[1].shape), 0, 1),
                               atol=1e-6)
    gray = run(_row(gray=1))[0]
    np.testing.assert_allclose(gray, np.repeat((u[0] @ LUMA)[..., None], 3, -1), atol=1e-6)
    sol = run(_row(solarize=1))[0]
    np.testing.assert_allclose(sol, np.where(x[0] >= 128, 1 - u[0], u[0]), atol=1e-6)


def test_draw_distributions():
    """Closed forms over 20,000 draws: coins at their probability, factors uniform on their
    ranges, the order a uniform permutation, sigma uniform on its range."""
    rng = np.random.default_rng(0)
    kw = dict(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, gray_p=0.2,
              blur_p=0.5, sigma_range=(0.1, 2.0), solarize_p=0.2)
    rows = np.stack([P.draw(rng, **kw) for _ in range(20000)])
    n = len(rows)
    for at, p in ((P.JITTER_AT, 0.8), (P.GRAY_AT, 0.2), (P.BLUR_AT, 0.5), (P.SOLARIZE_AT, 0.2)):
        assert abs(rows[:, at].mean() - p) < 4 * np.sqrt(p * (1 - p) / n), at
    j = rows[rows[:, P.JITTER_AT] > 0]
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        f = j[:, P.FACTORS_AT + k]
        assert lo <= f.min() and f.max() <= hi
        assert abs(f.mean() - (lo + hi) / 2) < 4 * (hi - lo) / np.sqrt(12 * len(f))
        assert abs(f.var() - (hi - lo) ** 2 / 12) < 0.05 * (hi - lo) ** 2 / 12
    order = j[:, P.ORDER_AT:P.ORDER_AT + 4].astype(int)
    assert (np.sort(order, axis=1) == np.arange(4)).all()
    share = np.stack([(order == k).mean(0) for k in range(4)])   # op k in slot s: 1/4 each
    assert np.abs(share - 0.25).max() < 4 * np.sqrt(0.25 * 0.75 / len(j))
    off = rows[rows[:, P.JITTER_AT] == 0]
    np.testing.assert_array_equal(off[:, P.FACTORS_AT:P.FACTORS_AT + 4], [[1, 1, 1, 0]] * len(off))
    s = rows[rows[:, P.BLUR_AT] > 0, P.SIGMA_AT]
    assert 0.1 <= s.min() and s.max() <= 2.0 and abs(s.mean() - 1.05) < 4 * 1.9 / np.sqrt(12 * len(s))
    assert (rows[rows[:, P.BLUR_AT] == 0, P.SIGMA_AT] == 0).all()


SPEC = M.MultiCropSpec(64, 32, 3, mean="none", flip=True)


def _both(img: np.ndarray, seed: int, spec: M.MultiCropSpec = SPEC):
    host = M.multi_crop(img, np.random.default_rng(seed), spec)
    rng = np.random.default_rng(seed)
    dev = M.multi_crop(img, rng, dataclasses.replace(spec, on_device=True))
    return host, dev, rng


def _device_chain(dev: dict, spec: M.MultiCropSpec) -> dict:
    r = P.blur_radius(M.sigma_pixels(spec)[1])
    return {k: np.asarray(P.apply(jnp.asarray(dev[k]), jnp.asarray(dev[k + "_photo"]), r))
            for k in ("global", "local")}


def test_device_rows_keep_the_host_stream_and_geometry():
    """The device path draws exactly what the host path draws: with every photometric op off
    the uint8 crops are the host crops, and either way the rng ends in the same state."""
    img = np.random.default_rng(2).integers(0, 256, (80, 70, 3), dtype=np.uint8)
    off = dataclasses.replace(SPEC, jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0, 0.0),
                              solarize_p=(0.0, 0.0, 0.0))
    host, dev, _ = _both(img, 3, off)
    for k in ("global", "local"):
        assert dev[k].dtype == np.uint8 and dev[k + "_photo"].shape == (dev[k].shape[0], P.NUM_PARAMS)
        np.testing.assert_array_equal(dev[k], np.rint(host[k] * 255).astype(np.uint8))
    host_rng, dev_rng = np.random.default_rng(4), np.random.default_rng(4)
    M.multi_crop(img, host_rng, SPEC)
    M.multi_crop(img, dev_rng, dataclasses.replace(SPEC, on_device=True))
    assert host_rng.random() == dev_rng.random()


# The stated tolerance of the device chain against the host's PIL chain (pixels in [0, 1]): the
# host truncates to 8 bits after every op, hues through PIL's 8-bit HSV and approximates the
# Gaussian by box filters. Measured on these images: mean |difference| 0.0036 (1 channel) and
# 0.0048 (3), about one level of 255; the largest 0.065 and 0.073 (blurred edges, the hue round trip).
MEAN_TOL, MAX_TOL = 0.008, 0.1


@pytest.mark.parametrize("channels", [1, 3])
def test_device_chain_matches_the_host_chain(channels):
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:80, :70]   # smooth content with edges: a digit-like blob on a gradient
    base = np.stack([(xx * 3 + yy) % 256, (yy * 3) % 256, ((xx - 35) ** 2 + (yy - 40) ** 2 < 400) * 255], -1)
    img = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)[..., :channels]
    spec = dataclasses.replace(SPEC, blur_p=(1.0, 0.5, 0.5), solarize_p=(0.5, 0.5, 0.5), gray_p=0.3)
    worst, means = 0.0, []
    for seed in range(8):
        host, dev, _ = _both(img, seed, spec)
        got = _device_chain(dev, spec)
        for k in ("global", "local"):
            d = np.abs(got[k] - host[k])
            means.append(d.mean())
            worst = max(worst, float(d.max()))
    assert np.mean(means) < MEAN_TOL and worst < MAX_TOL, (np.mean(means), worst)


def test_apply_jits_once_per_shape():
    spec = dataclasses.replace(SPEC, on_device=True)
    img = np.random.default_rng(6).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    f = jax.jit(P.apply, static_argnums=2)
    outs = [M.multi_crop(img, np.random.default_rng(s), spec) for s in range(2)]
    for o in outs:
        f(jnp.asarray(o["local"]), jnp.asarray(o["local_photo"]), 3)
    assert f._cache_size() == 1
