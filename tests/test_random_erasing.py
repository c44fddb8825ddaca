"""Random erasing: the box's area and aspect follow their distributions, the fill its mode, the
probability its rate; the spec puts it after normalize and says so when it is not."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vit_jax.data import transforms as T
from vit_jax.data.random_erasing import random_erasing


def _box(before, after):
    """(h, w) of the changed region, asserting it is one axis-aligned rectangle."""
    rows, cols = np.nonzero(np.any(before != after, axis=-1))
    if rows.size == 0:
        return 0, 0
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert rows.size == h * w   # a filled rectangle (the N(0, 1) fill never equals the constant)
    return h, w


def test_box_area_and_aspect_distributions():
    rng = np.random.default_rng(0)
    img = np.full((64, 64, 3), 7.0, np.float32)
    areas, aspects = [], []
    for _ in range(2000):
        h, w = _box(img, random_erasing(img, p=1.0, rng=rng))
        assert 0 < h < 64 and 0 < w < 64
        areas.append(h * w / 64 ** 2)
        aspects.append(math.log(h / w))
    areas, aspects = np.array(areas), np.array(aspects)
    # the accepted boxes: area within the scale range (up to rounding), log-aspect within the
    # log-ratio range, centred on 0 (the range is symmetric)
    assert areas.min() > 0.02 * 0.7 and areas.max() < 1 / 3 * 1.3
    assert np.abs(aspects).max() < math.log(1 / 0.3) + 0.3
    assert abs(aspects.mean()) < 0.05
    # accepted boxes are biased to smaller areas (big, elongated ones do not fit); the area stays
    # uniform-ish: its mean lies between the range's low end and its mean (0.177)
    assert 0.08 < areas.mean() < 0.177


def test_probability_and_fill_modes():
    rng = np.random.default_rng(1)
    img = np.zeros((32, 32, 2), np.float32) + 5.0
    hits = sum(_box(img, random_erasing(img, p=0.25, rng=rng))[0] > 0 for _ in range(4000))
    assert abs(hits / 4000 - 0.25) < 0.03           # 4 sigma of a binomial(4000, 0.25)
    fills = np.concatenate([random_erasing(img, p=1.0, rng=rng)[..., 0].ravel() for _ in range(200)])
    fills = fills[fills != 5.0]
    assert abs(fills.mean()) < 0.02 and abs(fills.std() - 1.0) < 0.02   # pixel mode: N(0, 1)
    const = random_erasing(img, p=1.0, mode="const", rng=rng)
    assert set(np.unique(const)) == {0.0, 5.0}
    rand = random_erasing(img, p=1.0, mode="rand", rng=rng)
    changed = rand[np.any(rand != 5.0, axis=-1)]
    assert len(np.unique(changed[:, 0])) == 1 and len(np.unique(changed[:, 1])) == 1   # one colour
    assert random_erasing(img, p=0.0, rng=rng) is img


def test_in_a_spec_after_normalize():
    f = T.build("pad_crop(28, 2)|normalize('mnist')|random_erasing(1.0)")
    img = np.full((28, 28, 1), 128, np.uint8)
    plain = T.build("normalize('mnist')")({"image": img, "label": 3})["image"]
    out = f({"image": img, "label": 3}, rng=np.random.default_rng(0))["image"]
    assert out.dtype == np.float32 and 0 < np.mean(out != plain) < 0.5
    assert T.normalization_stats("normalize('mnist')|erase(0.25)") == T.normalization_stats("normalize('mnist')")


@pytest.mark.parametrize("spec,match", [
    ("random_erasing(0.5)|normalize('mnist')", "after normalize"),
    ("erase(0.5)", "after normalize"),
    ("normalize('mnist')|flip", "normalize must be the last"),
    ("normalize('mnist')|random_erasing(2)", "probability"),
    ("normalize('mnist')|erase(0.5, mode='x')", "mode"),
])
def test_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        T.build(spec)
