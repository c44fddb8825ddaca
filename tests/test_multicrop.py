"""DINO / EsViT multi-crop augmentation (vit_jax.data.multicrop): shapes, determinism, each op
against a closed form or an independent computation, crop areas, normalisation, the shape ops,
spec errors, speed. The colour ops themselves: tests/test_color_ops.py."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import multicrop as M
from vit_jax.data import pipeline
from vit_jax.data import transforms as T
from vit_jax.data.random_affine import affine_pil


def _img(h=24, w=24, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _rng(seed=0):
    return np.random.default_rng(seed)


# Every op off: the crops are plain bicubic random resized crops.
PLAIN = dict(flip=False, jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0, 0.0),
             solarize_p=(0.0, 0.0, 0.0))


# ------------------------------------------------------------------------- multi_crop outputs
@pytest.mark.parametrize("c,num_local", [(1, 6), (3, 2), (3, 0)])
def test_shapes_and_dtypes(c, num_local):
    spec = M.MultiCropSpec(16, 8, num_local, mean="mnist" if c == 1 else "imagenet")
    out = M.multi_crop(_img(30, 20, c), _rng(), spec)
    assert set(out) == {"global", "local"}
    assert out["global"].shape == (2, 16, 16, c) and out["global"].dtype == np.float32
    assert out["local"].shape == (num_local, 8, 8, c) and out["local"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in out.values())


def test_float_input_is_rounded_to_uint8():
    img = _img()
    spec = M.MultiCropSpec(12, 6, 3)
    a = M.multi_crop(img, _rng(3), spec)
    b = M.multi_crop(img.astype(np.float32) / 255, _rng(3), spec)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # a [0, 255] float image is a mistake
        M.multi_crop(img.astype(np.float32), _rng(), spec)
    with pytest.raises(ValueError, match="uint8"):
        M.multi_crop(_img(c=2), _rng(), spec)


def test_deterministic_per_seed():
    img, spec = _img(), M.MultiCropSpec(16, 8, 4)
    a, b, c = (M.multi_crop(img, _rng(s), spec) for s in (7, 7, 8))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    # the two global crops of one call differ, too
    assert not np.array_equal(a["global"][0], a["global"][1])


def test_normalisation_uses_the_given_stats():
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.25, 0.125)
    spec = M.MultiCropSpec(8, 4, 2, mean=mean, std=std, **PLAIN)
    img = np.full((20, 20, 3), (10, 128, 250), np.uint8)  # constant: every crop is this colour
    out = M.multi_crop(img, _rng(), spec)
    want = (np.array([10, 128, 250]) / 255 - np.array(mean)) / np.array(std)
    for v in out.values():
        np.testing.assert_allclose(v, np.broadcast_to(want, v.shape), atol=1e-5)
    # the same numbers as transforms.normalize on the crop a plain pipeline makes
    np.testing.assert_array_equal(out["global"][0], T.normalize(img[:8, :8], mean, std))
    # a preset, on one channel
    spec1 = M.MultiCropSpec(8, 4, 1, mean="mnist", **PLAIN)
    out1 = M.multi_crop(np.full((10, 10, 1), 51, np.uint8), _rng(), spec1)
    np.testing.assert_allclose(out1["local"], (0.2 - 0.1307) / 0.3081, atol=1e-5)
    with pytest.raises(ValueError, match="1-channel"):  # ImageNet's 3 values on a digit
        M.multi_crop(_img(c=1), _rng(), M.MultiCropSpec(8, 4, 1))


@pytest.mark.parametrize("flip", [True, False])
def test_flip_mirrors_half_the_crops(flip):
    ramp = np.broadcast_to(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (32, 32, 1))
    spec = M.MultiCropSpec(32, 8, 0, mean="none", global_scale=(1.0, 1.0),  # the whole image
                           **{**PLAIN, "flip": flip})
    rows = np.concatenate([M.multi_crop(ramp, _rng(s), spec)["global"][:, 16, :, 0]
                           for s in range(100)])
    mirrored = np.sum(rows[:, 0] > rows[:, -1])
    assert (75 < mirrored < 125) if flip else mirrored == 0, mirrored


def test_crop_areas_follow_the_scales(monkeypatch):
    """multi_crop asks for 2 global boxes at global_scale and N local at local_scale, and the boxes
    cover the right fraction of the image on average."""
    calls = []
    real = T.random_resized_crop_box

    def spy(h, w, scale, ratio=(3 / 4, 4 / 3), *, rng):
        box = real(h, w, scale, ratio, rng=rng)
        calls.append((scale, box[2] * box[3] / (h * w)))
        return box

    monkeypatch.setattr(T, "random_resized_crop_box", spy)
    spec = M.MultiCropSpec(8, 4, 6, mean="mnist", **PLAIN)
    img = np.zeros((200, 200, 1), np.uint8)
    for s in range(60):
        M.multi_crop(img, _rng(s), spec)
    scales = [c[0] for c in calls]
    assert scales == ([spec.global_scale] * 2 + [spec.local_scale] * 6) * 60
    glob = np.array([a for sc, a in calls if sc == spec.global_scale])
    loc = np.array([a for sc, a in calls if sc == spec.local_scale])
    # sides are rounded to whole pixels: allow a small margin around the requested range
    assert glob.min() >= 0.4 - 0.02 and glob.max() <= 1.0
    assert loc.min() >= 0.05 - 0.01 and loc.max() <= 0.4 + 0.01
    # area ~ U(scale) (boxes that do not fit are redrawn, which trims the top of (0.4, 1))
    assert 0.6 < glob.mean() < 0.72, glob.mean()
    assert abs(loc.mean() - 0.225) < 0.03, loc.mean()


def test_solarize_goes_to_the_second_global_crop():
    """solarize_p is (global 1, global 2, locals): DINO solarizes global crop 2 only."""
    spec = M.MultiCropSpec(28, 12, 2, mean="none", **{**PLAIN, "solarize_p": (0.0, 1.0, 0.0)})
    out = M.multi_crop(np.full((30, 30, 1), 200, np.uint8), _rng(), spec)
    np.testing.assert_allclose(out["global"][0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(out["global"][1], 55 / 255, atol=1e-6)  # solarized
    np.testing.assert_allclose(out["local"], 200 / 255, atol=1e-6)
    # on a random image: the same crops as without solarize (a probability of 0 or 1 draws
    # nothing), the second one solarized
    img = _img(30, 30, 3, seed=9)
    sol = M.multi_crop(img, _rng(4), dataclasses.replace(spec, mean=(0.0,), std=(1 / 255,)))
    raw = M.multi_crop(img, _rng(4), dataclasses.replace(spec, mean=(0.0,), std=(1 / 255,),
                                                        solarize_p=(0.0, 0.0, 0.0)))
    x = np.rint(raw["global"][1]).astype(np.uint8)  # std 1/255: the uint8 crop itself
    np.testing.assert_array_equal(sol["global"][1], np.where(x >= 128, 255 - x, x))
    np.testing.assert_array_equal(sol["global"][0], raw["global"][0])
    np.testing.assert_array_equal(sol["local"], raw["local"])


@pytest.mark.parametrize("blur_p,flat", [((1.0, 0.0, 0.0), (True, False, False)),
                                         ((0.0, 1.0, 0.0), (False, True, False)),
                                         ((0.0, 0.0, 1.0), (False, False, True))])
def test_blur_goes_to_its_crops(blur_p, flat):
    """blur_p is (global 1, global 2, locals): with a wide sigma a checkerboard of 4-px squares
    turns flat exactly in the crops whose probability is 1."""
    board = ((np.indices((64, 64)) // 4).sum(0) % 2 * 255).astype(np.uint8)[..., None]
    spec = M.MultiCropSpec(64, 8, 3, mean="none", blur_sigma=(8 * 224 / 64, 8 * 224 / 64),
                           **{**PLAIN, "blur_p": blur_p})  # sigma 8 px in every crop
    out = M.multi_crop(board, _rng(), spec)
    stds = [out["global"][0].std(), out["global"][1].std(), out["local"].std(axis=(1, 2, 3)).max()]
    for s, f in zip(stds, flat):
        assert (s < 0.03) if f else (s > 0.2), (blur_p, stds)


def test_blur_sigma_is_scaled_by_the_global_size(monkeypatch):
    seen = []
    real = M.photometric.draw
    monkeypatch.setattr(M.photometric, "draw", lambda rng, **kw: seen.append(kw["sigma_range"]) or real(rng, **kw))
    spec = M.MultiCropSpec(28, 12, 2, mean="none", **{**PLAIN, "blur_p": (1.0, 1.0, 1.0)})
    M.multi_crop(np.zeros((30, 30, 1), np.uint8), _rng(), spec)
    assert len(seen) == 4
    for sr in seen:  # one scale for every crop, locals included
        np.testing.assert_allclose(sr, (0.1 * 28 / 224, 2.0 * 28 / 224))


def test_transform_for_the_pipeline():
    spec = M.MultiCropSpec(8, 4, 3, mean="mnist", flip=False)
    source = [{"image": _img(12, 12, 1, seed=i), "label": i % 3} for i in range(10)]
    fn = M.multi_crop_transform(spec)
    ex = fn(source[0], _rng())
    assert set(ex) == {"global", "local", "label"} and ex["label"].dtype == np.int32
    p1 = pipeline.TrainPipeline(source, fn, global_batch=4, seed=1, workers=2)
    p2 = pipeline.TrainPipeline(source, fn, global_batch=4, seed=1, workers=1)
    b1, b2 = next(p1), next(p2)
    p1.close(), p2.close()
    assert b1["global"].shape == (4, 2, 8, 8, 1) and b1["local"].shape == (4, 3, 4, 4, 1)
    for k in b1:  # threads or not, the same batch
        np.testing.assert_array_equal(b1[k], b2[k])


# ---------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("field,value,msg", [
    ("global_size", 0, "global_size"), ("local_size", 2.5, "local_size"),
    ("num_local", -1, "num_local"), ("global_scale", (0.0, 1.0), "global_scale"),
    ("local_scale", (0.4, 0.05), "local_scale"), ("global_scale", (0.4, 1.2), "global_scale"),
    ("jitter_p", 1.5, "jitter_p"), ("gray_p", -0.1, "gray_p"), ("blur_p", (1.0, 0.1), "blur_p"),
    ("solarize_p", (0.0, 2.0, 0.0), "solarize_p"), ("brightness", -0.4, "brightness"),
    ("hue", 0.6, "hue"), ("blur_sigma", (2.0, 0.1), "blur_sigma"),
    ("mean", "imagenette", "preset"), ("std", (0.0,), "std"),
])
def test_spec_validate_errors(field, value, msg):
    kw = {"global_size": 224, "local_size": 96, "num_local": 8}
    if field == "std":
        kw["mean"] = (0.5,)
    with pytest.raises(ValueError, match=msg):
        M.MultiCropSpec(**{**kw, field: value})


def test_spec_defaults_and_lists():
    spec = M.MultiCropSpec(224, 96, 8)
    spec.validate()
    assert spec.stats == T.get_stats("imagenet")
    s2 = M.MultiCropSpec(28, 12, 0, blur_p=[1, 0.1, 0.5], global_scale=[0.4, 1], mean=[0.1],
                         std=[0.3], flip=False)
    assert s2.blur_p == (1.0, 0.1, 0.5) and s2.global_scale == (0.4, 1.0) and s2.mean == (0.1,)
    hash(s2)  # frozen and hashable


# ---------------------------------------------------------------------------------- speed
def test_small_images_are_fast():
    """28x28x1 -> 2 x 28 + 6 x 12 crops, DINO's ops: well under 5 ms per image (the host also
    feeds a training loop); best of 3 medians, so a busy machine does not fail it."""
    spec = M.MultiCropSpec(28, 12, 6, flip=False, mean="mnist")
    img, rng = _img(28, 28, 1), _rng()
    M.multi_crop(img, rng, spec)
    medians = []
    for _ in range(3):
        ts = []
        for _ in range(40):
            t0 = time.perf_counter()
            M.multi_crop(img, rng, spec)
            ts.append(time.perf_counter() - t0)
        medians.append(np.median(ts))
    assert min(medians) < 5e-3, medians


# ---------------------------------------------------------------------------------- shape ops
def _dot(h=9, w=9, x=4, y=4):
    a = np.zeros((h, w), np.uint8)
    a[y, x] = 255
    return Image.fromarray(a)


@pytest.mark.parametrize("angle,shear,src,dst", [
    (90.0, 0.0, (7, 4), (4, 7)),      # (x, y) -> (-y, x) about the centre (4, 4): y points down
    (0.0, 45.0, (4, 6), (6, 6)),      # x' = x + tan(45) y
    (0.0, 0.0, (2, 3), (2, 3)),
])
def test_rotate_shear_moves_a_pixel_where_the_matrix_says(angle, shear, src, dst):
    out = np.asarray(affine_pil(_dot(x=src[0], y=src[1]), angle, shear=shear))
    assert np.unravel_index(np.argmax(out), out.shape) == (dst[1], dst[0])
    assert out.max() >= 253 and abs(int(out.sum()) - 255) <= 2   # integer moves: exact up to rounding


def test_shape_ops_are_off_by_default_and_deterministic_when_on():
    img = np.zeros((28, 28, 1), np.uint8)
    img[6:22, 12:16] = 255                               # a vertical stroke
    base = dict(PLAIN, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), mean=(0.0,), std=(1.0,))
    plain = M.multi_crop(img, _rng(3), M.MultiCropSpec(28, 28, 2, **base))
    assert np.array_equal(plain["global"][0], plain["global"][1])       # full crops, no ops
    spec = M.MultiCropSpec(28, 28, 2, **base, rotate=30.0, shear=20.0, morph_p=1.0)
    a, b = M.multi_crop(img, _rng(3), spec), M.multi_crop(img, _rng(3), spec)
    np.testing.assert_array_equal(a["global"], b["global"])
    views = np.concatenate([a["global"], a["local"]])
    assert not np.array_equal(views[0], views[1])
    # the 3x3 max / min filter alone makes the 4-px stroke 6 px / 2 px wide: every view's ink moves
    # by about half, up or down (at this seed both happen)
    morph = M.multi_crop(img, _rng(3), M.MultiCropSpec(28, 28, 2, **base, morph_p=1.0))
    ratio = np.concatenate([morph["global"], morph["local"]]).reshape(4, -1).sum(1) / plain["global"][0].sum()
    assert all(r > 1.3 or r < 0.7 for r in ratio) and ratio.max() > 1.3 and ratio.min() < 0.7, ratio


def test_fractional_morph_strength_gives_stroke_widths_in_between():
    img = np.zeros((28, 28, 1), np.uint8)
    img[6:22, 12:16] = 255                               # a vertical stroke, 4 px wide
    base = dict(PLAIN, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), mean=(0.0,), std=(1.0,))
    plain = M.multi_crop(img, _rng(3), M.MultiCropSpec(28, 28, 8, **base))["global"][0].sum()
    spec = M.MultiCropSpec(28, 28, 8, **base, morph_p=1.0, morph_strength=(0.0, 1.0))
    out = M.multi_crop(img, _rng(5), spec)
    ratio = np.concatenate([out["global"], out["local"]]).reshape(10, -1).sum(1) / plain
    # the max filter makes the 16 x 4 stroke 18 x 6 (ink x 108 / 64), the min filter 14 x 2 (x 28 / 64);
    # a blend of weight t gives 1 + t * 44 / 64 or 1 - t * 36 / 64
    lo, hi = 28 / 64, 108 / 64
    assert np.all((ratio > lo - 1e-6) & (ratio < hi + 1e-6)), ratio
    inside = (np.abs(ratio - 1) > 0.02) & (np.abs(ratio - lo) > 0.02) & (np.abs(ratio - hi) > 0.02)
    assert inside.sum() >= 5 and ratio.max() > 1 > ratio.min(), ratio   # widths in between, both ways


@pytest.mark.parametrize("field,value", [("rotate", -1.0), ("shear", 91.0), ("morph_p", 1.5),
                                         ("morph_strength", (0.5, 0.2)), ("morph_strength", (0.0, 1.5))])
def test_shape_op_spec_errors(field, value):
    with pytest.raises(ValueError, match=field):
        M.MultiCropSpec(28, 12, 2, **{field: value})
