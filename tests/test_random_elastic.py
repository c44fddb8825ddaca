"""random_elastic: the warp against closed-form pixel moves, the field's spread against its closed
form, the spec op's argument checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from vit_jax.data import transforms as T
from vit_jax.data.random_elastic import displace, elastic_field, random_elastic


def _digit(h=28, w=28):
    a = np.zeros((h, w, 1), np.uint8)
    a[6:22, 10:18, 0] = np.random.default_rng(0).integers(1, 256, (16, 8), dtype=np.uint8)
    return a


def test_zero_alpha_is_the_identity():
    a = _digit()
    assert np.array_equal(random_elastic(a, 0.0, 4.0, rng=np.random.default_rng(1)), a)


@pytest.mark.parametrize("dy,dx", [(2, 0), (0, -3), (-1, 4)])
def test_a_constant_integer_field_is_a_shift_with_zero_fill(dy, dx):
    a = _digit()
    out = displace(a, np.full((28, 28), float(dy)), np.full((28, 28), float(dx)))
    want = np.zeros_like(a)   # out[y, x] = a[y + dy, x + dx]
    want[max(-dy, 0):28 - max(dy, 0), max(-dx, 0):28 - max(dx, 0)] = \
        a[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)]
    assert np.array_equal(out, want)


def test_a_half_pixel_field_averages_neighbours():
    a = np.zeros((4, 4, 1), np.uint8)
    a[:, 1] = 100
    a[:, 2] = 201
    out = displace(a, np.zeros((4, 4)), np.full((4, 4), 0.5))
    assert out[1, 0, 0] == 50 and out[1, 1, 0] == 150   # round(150.5) = 150 (half to even)


@pytest.mark.parametrize("hw,sigma", [((28, 28), 4.0), ((20, 33), 2.5)])
def test_field_is_scipys_gaussian_filter_of_uniform_noise(hw, sigma):
    dy, dx = elastic_field(np.random.default_rng(5), hw, 34.0, sigma)
    rng = np.random.default_rng(5)
    for d in (dy, dx):
        np.testing.assert_allclose(d, 34.0 * ndimage.gaussian_filter(rng.uniform(-1, 1, hw), sigma),
                                   atol=1e-12)


def test_field_spread_matches_the_closed_form():
    # Away from the edges each displacement is alpha * sum_ij g_i g_j u_ij with u ~ U(-1, 1) iid:
    # variance alpha^2 / 3 * (sum_i g_i^2)^2, g scipy's normalised 1-D kernel of radius 4 sigma.
    alpha, sigma = 34.0, 4.0
    r = int(4 * sigma + 0.5)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    g /= g.sum()
    want = alpha * math.sqrt((g ** 2).sum() ** 2 / 3)
    dy, dx = elastic_field(np.random.default_rng(0), (400, 400), alpha, sigma)
    inner = (slice(2 * r, -2 * r),) * 2
    for d in (dy, dx):
        assert abs(d[inner].mean()) < 0.05 * want
        assert d[inner].std() == pytest.approx(want, rel=0.05)
    assert abs(np.corrcoef(dy[inner].ravel(), dx[inner].ravel())[0, 1]) < 0.05   # independent axes


def test_the_same_rng_gives_the_same_warp_and_another_a_different_one():
    a = _digit()
    one = random_elastic(a, rng=np.random.default_rng(3))
    assert np.array_equal(one, random_elastic(a, rng=np.random.default_rng(3)))
    assert not np.array_equal(one, random_elastic(a, rng=np.random.default_rng(4)))
    assert one.dtype == np.uint8 and one.shape == a.shape


def test_p_applies_it_to_that_fraction_of_the_images():
    a, rng = _digit(), np.random.default_rng(6)
    changed = [not np.array_equal(random_elastic(a, p=0.3, rng=rng), a) for _ in range(2000)]
    assert np.mean(changed) == pytest.approx(0.3, abs=0.04)   # 6 sigma of a binomial(2000, 0.3)
    assert np.array_equal(random_elastic(a, p=0.0, rng=rng), a)


def test_spec_op_and_its_argument_checks():
    fn = T.build("affine(10, (0.1, 0.1), (0.9, 1.1))|elastic(34, 4)|normalize('mnist')")
    assert fn.random_ops == ["random_affine", "random_elastic"]
    out = fn({"image": _digit(), "label": 3}, np.random.default_rng(0))
    assert out["image"].shape == (28, 28, 1) and out["image"].dtype == np.float32
    with pytest.raises(ValueError, match="sigma=0"):
        T.build("random_elastic(34, 0)")
    with pytest.raises(ValueError, match="p=1.5"):
        T.build("random_elastic(34, 4, 1.5)")
    with pytest.raises(ValueError, match="alpha=-1"):
        T.build("random_elastic(-1, 4)")
