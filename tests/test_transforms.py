"""Host transforms, the spec parser, and on-device mixup/cutmix."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_config import get_config
from vit_jax import objectives, sharding
from vit_jax.data import mixup, randaugment, transforms as T
from vit_jax.data.info import DataInfo


def _img(h=20, w=30, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------ single ops
@pytest.mark.parametrize("c", [1, 3])
def test_shapes_and_dtypes(c):
    img = _img(c=c)
    cases = {
        "rrc": T.random_resized_crop(img, 16, rng=_rng()),
        "rrc_hw": T.random_resized_crop(img, (12, 16), rng=_rng()),
        "flip": T.random_flip(img, _rng()),
        "resize": T.resize(img, 10),
        "resize_hw": T.resize(img, (7, 9)),
        "center_crop": T.center_crop(img, 12),
        "center_crop_pad": T.center_crop(img, 24),
        "resize_center_crop": T.resize_center_crop(img, 14),
        "pad_crop": T.random_crop_with_padding(img, 16, 4, _rng()),
        "randaug": T.rand_augment(img, rng=_rng()),
        "to_rgb": T.to_rgb(img),
        "to_gray": T.to_gray(img),
    }
    expected = {"rrc": (16, 16), "rrc_hw": (12, 16), "flip": (20, 30), "resize": (10, 15),
                "resize_hw": (7, 9), "center_crop": (12, 12), "center_crop_pad": (24, 24),
                "resize_center_crop": (14, 14), "pad_crop": (16, 16), "randaug": (20, 30),
                "to_rgb": (20, 30), "to_gray": (20, 30)}
    for name, out in cases.items():
        want_c = 3 if name == "to_rgb" else 1 if name == "to_gray" else c
        assert out.shape == (*expected[name], want_c), name
        assert out.dtype == np.uint8, name


def test_geometry_exact():
    img = _img(h=10, w=10, c=1)
    np.testing.assert_array_equal(T.center_crop(img, 4), img[3:7, 3:7])
    np.testing.assert_array_equal(T.random_flip(img, _rng(), p=1.0), img[:, ::-1])
    np.testing.assert_array_equal(T.random_flip(img, _rng(), p=0.0), img)
    assert T.resize(_img(h=224, w=300), 256).shape == (256, 342, 3)  # torchvision: int(256*300/224)
    # pad 3 then crop 10: a shifted copy of the original, zeros where it falls off
    out = T.random_crop_with_padding(img, 10, 3, _rng(5))
    padded = np.pad(img, ((3, 3), (3, 3), (0, 0)))
    assert any(np.array_equal(out, padded[i:i + 10, j:j + 10]) for i in range(7) for j in range(7))
    np.testing.assert_array_equal(T.random_crop_with_padding(img, 10, 0, _rng()), img)


def test_random_resized_crop_box_statistics():
    rng = _rng(1)
    boxes = np.array([T.random_resized_crop_box(100, 100, (0.2, 0.6), rng=rng)
                      for _ in range(2000)])
    top, left, h, w = boxes.T
    frac = h * w / 1e4
    assert frac.min() >= 0.2 - 0.02 and frac.max() <= 0.6 + 0.02  # bounds up to rounding
    assert abs(frac.mean() - 0.4) < 0.01  # every try fits here, so area ~ U(0.2, 0.6)
    assert (w / h).min() >= 3 / 4 - 0.03 and (w / h).max() <= 4 / 3 + 0.03
    assert top.min() >= 0 and (top + h).max() <= 100 and (left + w).max() <= 100
    # impossible scale -> the center fallback, clamped to the ratio range
    assert T.random_resized_crop_box(10, 100, (2.0, 3.0), rng=rng) == (0, 43, 10, 13)
    assert T.random_resized_crop_box(50, 50, (2.0, 3.0), rng=rng) == (0, 0, 50, 50)


def test_determinism_across_seeds():
    fn = T.build("rrc(24, scale=(0.3, 1))|flip|randaug(2, 9)|normalize", mean="imagenet")
    ex = {"image": _img(h=40, w=40), "label": 3}
    a, b, c = fn(ex, _rng(7)), fn(ex, _rng(7)), fn(ex, _rng(8))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].dtype == np.float32 and a["image"].shape == (24, 24, 3)
    assert a["label"].dtype == np.int32 and a["label"] == 3
    assert ex["image"].dtype == np.uint8  # input untouched


def test_normalize_values():
    img = np.array([0, 255, 51], np.uint8).reshape(1, 3, 1)
    out = T.normalize(img, "mnist")
    np.testing.assert_allclose(out[0, :, 0], (np.array([0, 1, 0.2]) - 0.1307) / 0.3081, rtol=1e-6)
    np.testing.assert_allclose(T.normalize(img, "none")[0, :, 0], [0, 1, 0.2], rtol=1e-6)
    rgb = np.full((2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(T.normalize(rgb)[0, 0], (1 - np.array(T.IMAGENET_MEAN))
                               / np.array(T.IMAGENET_STD), rtol=1e-6)
    np.testing.assert_allclose(T.normalize(rgb, "inception"), 1.0)
    np.testing.assert_allclose(T.normalize(rgb, (0.5,), (0.25,)), 2.0)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="does not fit a 1-channel image"):
        T.normalize(img, "imagenet")
    with pytest.raises(ValueError, match="valid: imagenet, mnist, clip, inception, cifar10, none"):
        T.normalize(img, "cifar")


@pytest.mark.parametrize("c", [1, 3])
def test_rand_augment_every_op(c):
    img, rng = _img(c=c), _rng(2)
    changed = 0
    for op in T.RAND_AUGMENT_OPS:
        for level in (0.0, 0.5, 1.0):
            out = T.from_pil(randaugment.apply_op(T.to_pil(img), op, level, rng, 128))
            assert out.shape == img.shape and out.dtype == np.uint8, op
        changed += not np.array_equal(out, img)
    assert changed >= 12  # AutoContrast (full-range noise), Solarize(256) and gray Color are no-ops
    out = T.rand_augment(img, 2, 9, rng=_rng(3))
    np.testing.assert_array_equal(out, T.rand_augment(img, 2, 9, rng=_rng(3)))
    np.testing.assert_array_equal(T.rand_augment(img, 3, rng=_rng(), prob=0.0), img)
    full = T.rand_augment(img, 1, 10, 0.0, rng=_rng(), ops=("Invert",), prob=1.0)
    np.testing.assert_array_equal(full, 255 - img)
    black = T.rand_augment(img, 1, 0, 0.0, rng=_rng(), ops=("Posterize",), prob=1.0)
    assert black.max() == 0  # magnitude 0 keeps 0 bits, as timm


def test_rand_augment_increasing_ops_grow_with_the_magnitude():
    """timm's inc1 variants: stronger with the magnitude, 10 the strongest (closed forms)."""
    img = _img(c=3)
    assert set(randaugment.RAND_AUGMENT_INCREASING_OPS) - set(T.RAND_AUGMENT_OPS) == {
        "PosterizeIncreasing", "SolarizeIncreasing", "ColorIncreasing", "ContrastIncreasing",
        "BrightnessIncreasing", "SharpnessIncreasing"}
    one = lambda op, m, seed=0: T.rand_augment(img, 1, m, 0.0, rng=_rng(seed), ops=(op,), prob=1.0)
    for op in ("SolarizeIncreasing", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
               "SharpnessIncreasing"):   # magnitude 0: the identity
        np.testing.assert_array_equal(one(op, 0), img, err_msg=op)
    np.testing.assert_array_equal(one("PosterizeIncreasing", 0), img & 0xF0)   # 4 bits, as timm
    np.testing.assert_array_equal(one("SolarizeIncreasing", 10), 255 - img)   # threshold 0
    assert one("PosterizeIncreasing", 10).max() == 0                           # 0 bits kept
    np.testing.assert_array_equal(one("PosterizeIncreasing", 5), img & 0xC0)   # 4 - 2 = 2 bits
    # brightness factor 1 +- 0.9: both signs occur over seeds, never below the 0.1 floor
    means = {round(float(one("BrightnessIncreasing", 10, seed).mean()) / img.mean(), 1) for seed in range(8)}
    assert means <= {0.1, 1.5, 1.6, 1.7, 1.8, 1.9} and 0.1 in means and len(means) >= 2
    # increasing=True draws from the inc1 set; the spec takes it and refuses a non-flag
    spec = T.build("randaug(2, 9, 0.5, increasing=True)|normalize", mean="imagenet")
    assert spec({"image": img, "label": 0}, _rng())["image"].shape == img.shape
    with pytest.raises(ValueError, match="increasing=1 must be True or False"):
        T.build("randaug(2, 9, increasing=1)|normalize", mean="imagenet")


# ------------------------------------------------------------------------------ spec parser
def test_build_spec_forms():
    ex = {"image": _img(c=1), "label": 1, "id": "x"}
    a = T.build("rrc(scale=(0.5, 1))|flip|randaug(2, 9)|normalize", image_size=16, mean="mnist")
    b = T.build(["random_resized_crop(16, (0.5, 1))", "random_flip", "rand_augment(2, 9)"],
                mean=T.MNIST_MEAN, std=T.MNIST_STD)
    np.testing.assert_array_equal(a(ex, _rng(4))["image"], b(ex, _rng(4))["image"])
    assert a(ex, _rng())["id"] == "x"  # other keys pass through
    ev = T.build("resize_center_crop(16)|normalize('mnist')")
    assert ev(ex)["image"].shape == (16, 16, 1)  # no random op: rng not needed
    np.testing.assert_array_equal(T.build("", mean="mnist")(ex)["image"],
                                  T.normalize(ex["image"], "mnist"))  # normalize appended
    assert T.build("to_rgb", mean="imagenet")(ex)["image"].shape == (20, 30, 3)
    ra = T.build("randaug(ops=('Rotate', 'Invert'))|normalize('none')")
    assert ra(ex, _rng())["image"].max() <= 1


@pytest.mark.parametrize("spec, match", [
    ("bogus", "unknown transform 'bogus'.*valid: affine, center_crop"),
    ("rrc(16, scal=1)", "unexpected keyword argument 'scal'.*size, scale, ratio"),
    ("rrc(1, 2, 3, 4)", "too many positional"),
    ("normalize|flip", "normalize must be the last"),
    ("rrc(x)", "must be Python literals"),
    ("rrc(__import__('os'))", "must be Python literals"),
    ("rrc(16", "unbalanced"),
    ("os.system('x')", "must look like name"),
    ("resize", "needs a size"),
    ("randaug(ops=['Foo'])", "RandAugment ops are AutoContrast"),
    ("normalize((0.1,))", "needs an explicit std"),
    ("normalize('nope')", "unknown normalization preset"),
])
def test_build_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        T.build(spec)


def test_random_spec_needs_rng():
    with pytest.raises(ValueError, match="random_flip.*are random"):
        T.build("flip", mean="mnist")({"image": _img(c=1), "label": 0})


# ------------------------------------------------------------------------------ mixup / cutmix
# One compiled function serves every test: the alphas are static (they decide which branches
# exist), switch_prob and prob are traced, so switch_prob 0 / 1 give mixup-only / cutmix-only.
_mix = jax.jit(mixup.mixup_cutmix, static_argnames=("mixup_alpha", "cutmix_alpha", "groups"))


def _mixed(seed, images, targets, switch_prob=0.5, prob=1.0):  # same signature: one compile
    return _mix(jax.random.key(seed), images, targets, mixup_alpha=0.8, cutmix_alpha=1.0,
                switch_prob=switch_prob, prob=prob)


def _batch(b=4, h=16, w=16, k=5):
    # example i is the constant image i, so a mixed pixel tells where it came from
    images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, h, w, 3))
    labels = jnp.arange(b) % k
    return images, mixup.one_hot_smooth(labels, k, 0.0), labels


def test_one_hot_smooth():
    t = mixup.one_hot_smooth(jnp.array([0, 2]), 4, 0.1)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t[0], [0.925, 0.025, 0.025, 0.025], rtol=1e-6)


def test_mixup_identity_cases():
    images, targets, _ = _batch()
    outs = [mixup.mixup_cutmix(jax.random.key(0), images, targets, 0.0, 0.0),  # both off
            _mixed(0, images, targets, prob=0.0)]  # never applied
    for x, y in outs:
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, targets)
    inside, lam = mixup.cutmix_box(jax.random.key(0), jnp.float32(1.0), 16, 16)  # lam 1: no box
    assert not inside.any() and float(lam) == 1.0


def test_mixup_only():
    images, targets, labels = _batch()
    for seed in range(5):
        x, y = _mixed(seed, images, targets, switch_prob=0.0)
        lam = float(y[0, labels[0]])  # labels 0 and 3 differ, so lam is readable from y
        assert 0.0 < lam < 1.0
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(x, lam * images + (1 - lam) * images[::-1], rtol=1e-5, atol=1e-5)


def test_mixup_pairs_within_device_blocks_without_collectives():
    """groups=G mixes row i with its mirror inside its block of B/G rows; on 8 devices with G = 8
    the compiled mix has no collective-permute, where the whole-batch flip (timm's) needs them."""
    images, targets, _ = _batch(b=16)
    x, y = _mix(jax.random.key(1), images, targets, mixup_alpha=0.8, cutmix_alpha=0.0, groups=4)
    lam = float(y[0, 0])   # row 0 (label 0) is mixed with row 3 (label 3)
    partner = np.array([3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12], np.float32)
    np.testing.assert_allclose(x[:, 0, 0, 0], lam * np.arange(16) + (1 - lam) * partner, rtol=1e-5)
    np.testing.assert_array_equal(mixup.flip_within(jnp.arange(6), 1), np.arange(6)[::-1])
    with pytest.raises(ValueError, match="must divide the batch"):
        mixup.flip_within(jnp.arange(6), 4)
    mesh = sharding.make_mesh(8, 1, 1)
    rows = sharding.batch_sharding(mesh)
    images, targets, _ = _batch(b=32)
    for groups, permutes in ((1, True), (8, False)):
        f = jax.jit(lambda i, t, g=groups: mixup.mixup_cutmix(jax.random.key(0), i, t, 0.8, 1.0, groups=g),
                    in_shardings=(rows, rows), out_shardings=(rows, rows))
        hlo = f.lower(images, targets).compile().as_text()
        assert ("collective-permute" in hlo) == permutes, groups
    assert sharding.batch_shard_count({"data": -1, "fsdp": 1, "model": 1}, 8) == 8
    assert sharding.batch_shard_count({"data": 2, "fsdp": 2, "model": 2}, 8) == 4


def test_cutmix_area_correction():
    images, targets, labels = _batch()
    for seed in range(8):
        x, y = _mixed(seed, images, targets, switch_prob=1.0)
        from_flip = np.asarray(x[0, :, :, 0] == 3.0)  # image 0 mixed with image 3
        assert np.all((x[0] == 0.0) | (x[0] == 3.0))  # pixels are pasted, not blended
        lam = float(y[0, labels[0]])
        np.testing.assert_allclose(lam, 1 - from_flip.mean(), rtol=1e-6)  # corrected lam = area
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    # closed form for the box: side = int(16 * sqrt(1 - 0.75)) = 8, centre clipped at borders
    for seed in range(4):
        inside, lam = mixup.cutmix_box(jax.random.key(seed), jnp.float32(0.75), 16, 16)
        ys, xs = np.nonzero(np.asarray(inside))
        hh, ww = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert hh <= 8 and ww <= 8 and inside.sum() == hh * ww
        assert hh == 8 or ys.min() == 0 or ys.max() == 15
        assert ww == 8 or xs.min() == 0 or xs.max() == 15
        np.testing.assert_allclose(float(lam), 1 - hh * ww / 256, rtol=1e-6)


def test_switch_under_jit():
    images, targets, _ = _batch()
    kinds = set()
    for seed in range(12):
        x, y = _mixed(seed, images, targets)  # switch_prob 0.5
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
        kinds.add("cutmix" if bool(jnp.all((x[0] == 0) | (x[0] == 3))) else "mixup")
    assert kinds == {"cutmix", "mixup"}  # both picked over 12 draws


def test_mixing_stops_at_mixup_off():
    """supervised.mixup_off_*: the loss mixes before the step and is the plain loss from it on."""
    cfg = get_config()
    cfg.supervised.update(dict(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_off_epochs=1.0))
    info = DataInfo(num_classes=10, image_shape=(8, 8, 1), num_train=160)   # 1 epoch = 10 steps
    mixed = objectives.build(cfg, info)
    assert mixed.mix_steps == 10
    cfg.supervised.update(dict(mixup_alpha=0.0, cutmix_alpha=0.0))
    plain = objectives.build(cfg, info)
    batch = {"image": jax.random.normal(jax.random.key(0), (16, 8, 8, 1)), "label": jnp.arange(16) % 10}
    params, extra = mixed.init(jax.random.key(1), batch)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape), params)  # not a zero head
    loss = jax.jit(lambda o, step: o.loss(params, extra, batch, jax.random.key(2), step)[0],
                   static_argnums=0)
    assert float(loss(mixed, 9)) != pytest.approx(float(loss(plain, 9)), rel=1e-3)
    assert float(loss(mixed, 10)) == pytest.approx(float(loss(plain, 10)), rel=1e-6)
