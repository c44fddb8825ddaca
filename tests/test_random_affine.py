"""random_affine: the warp against closed-form pixel moves, the draws against their distributions,
the spec op's argument checks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import transforms as T
from vit_jax.data.random_affine import affine_pil, random_affine, sample_affine


def _digit(h=28, w=28):
    rng = np.random.default_rng(0)
    a = np.zeros((h, w), np.uint8)
    a[6:22, 10:18] = rng.integers(0, 256, (16, 8), dtype=np.uint8)
    return a


def test_identity_is_exact():
    a = _digit()
    assert np.array_equal(np.asarray(affine_pil(Image.fromarray(a), 0.0)), a)


@pytest.mark.parametrize("tx,ty", [(3, 0), (0, -2), (-4, 5)])
def test_integer_translation_is_a_shift_with_zero_fill(tx, ty):
    a = _digit()
    out = np.asarray(affine_pil(Image.fromarray(a), 0.0, (tx, ty)))
    want = np.zeros_like(a)
    want[max(ty, 0):28 + min(ty, 0), max(tx, 0):28 + min(tx, 0)] = \
        a[max(-ty, 0):28 - max(ty, 0), max(-tx, 0):28 - max(tx, 0)]
    assert np.array_equal(out, want)


def test_quarter_turn_about_the_centre_is_rot90():
    # even size: the centre (14, 14) maps pixel centres onto pixel centres, so bilinear is exact;
    # x' = -y, y' = x about the centre (y points down) is numpy's rot90 clockwise, k = -1
    a = _digit()
    out = np.asarray(affine_pil(Image.fromarray(a), 90.0))
    assert np.abs(out.astype(int) - np.rot90(a, k=-1).astype(int)).max() <= 1


def test_scale_moves_a_pixel_away_from_the_centre():
    a = np.zeros((28, 28), np.uint8)
    a[14 + 3, 14 + 5] = 255            # centre of pixel (19, 17) is 5.5, 3.5 from the centre (14, 14)
    out = np.asarray(affine_pil(Image.fromarray(a), 0.0, scale=2.0))
    ys, xs = np.nonzero(out)
    wy, wx = np.average(ys, weights=out[ys, xs]) + 0.5, np.average(xs, weights=out[ys, xs]) + 0.5
    assert abs(wx - (14 + 2 * 5.5)) < 0.3 and abs(wy - (14 + 2 * 3.5)) < 0.3


def test_draws_follow_their_distributions():
    rng = np.random.default_rng(1)
    draws = [sample_affine(rng, (28, 20), 10.0, (0.1, 0.2), (0.9, 1.1), 5.0) for _ in range(4000)]
    angle, t, s, sh = (np.array(x) for x in zip(*draws))
    t = np.stack(t)
    assert np.abs(angle).max() <= 10 and abs(np.var(angle) - 100 / 3) < 3     # U(-10, 10): var 33.3
    assert np.abs(sh).max() <= 5 and abs(np.mean(sh)) < 0.3
    assert s.min() >= 0.9 and s.max() <= 1.1 and abs(s.mean() - 1.0) < 0.005
    # translations are whole pixels within translate * (W, H): x in [-2, 2], y in [-5.6, 5.6] -> [-6, 6]
    assert np.array_equal(t, np.round(t))
    assert set(np.unique(t[:, 0])) == {-2, -1, 0, 1, 2} and np.abs(t[:, 1]).max() == 6


def test_array_op_is_deterministic_per_rng_and_keeps_shape():
    a = _digit()[..., None]
    one = random_affine(a, rng=np.random.default_rng(3))
    assert one.shape == a.shape and one.dtype == np.uint8
    assert np.array_equal(one, random_affine(a, rng=np.random.default_rng(3)))
    assert not np.array_equal(one, a)
    rgb = np.repeat(a, 3, axis=-1)
    assert np.array_equal(random_affine(rgb, rng=np.random.default_rng(3)), np.repeat(one, 3, -1))


def test_spec_op_and_its_argument_checks():
    fn = T.build("affine(15, (0.1, 0.1), (0.9, 1.1), 10)|normalize('mnist')")
    out = fn({"image": _digit()[..., None], "label": 3}, np.random.default_rng(0))
    assert out["image"].shape == (28, 28, 1) and out["image"].dtype == np.float32
    for bad, word in [("random_affine(degrees=95)", "degrees"), ("random_affine(translate=(0.1,))", "translate"),
                      ("random_affine(scale=(1.1, 0.9))", "scale"), ("random_affine(shear=-5)", "shear")]:
        with pytest.raises(ValueError, match=word):
            T.build(bad)
    with pytest.raises(ValueError, match="normalize must be the last"):
        T.build("normalize('mnist')|random_affine")    # after normalize: refused at build time
    with pytest.raises(ValueError, match="uint8"):
        random_affine(np.zeros((28, 28, 1), np.float32), rng=np.random.default_rng(0))
