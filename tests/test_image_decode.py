"""data.decode="draft": an image file decoded at the JPEG scale its resized crop needs.

The factor in closed form; bit for bit the full-size path where no factor applies (and for PNG);
close to it where one does; the same random boxes as the full path (the transform draws from the
header's size); errors that name the file; the config checks before any compile."""
import os

import numpy as np
import pytest
from PIL import Image

from vit_jax import validate
from vit_jax.config_base import base_config
from vit_jax.data import sources, transforms
from vit_jax.data.image_decode import EncodedImage, draft_factor, jpeg_draft
from vit_jax.errors import ConfigError, DataError


@pytest.mark.parametrize("hw, out, box, want", [
    ((750, 1000), (224, 224), None, 2),                 # 750 / 224 = 3.3 -> 2
    ((750, 1000), (96, 96), None, 4),                   # 7.8 -> 4
    ((750, 1000), (64, 64), None, 8),                   # 11.7 -> 8, the largest JPEG scale
    ((750, 1000), (224, 224), (0, 0, 447, 600), 1),     # 447 / 224 < 2: no factor
    ((750, 1000), (224, 224), (0, 0, 448, 600), 2),
    ((375, 500), (224, 224), None, 1),                  # ImageNet's median size at 224: no factor
])
def test_draft_factor(hw, out, box, want):
    assert draft_factor(hw, out, box) == want


@pytest.mark.parametrize("hw", [(375, 500), (600, 800), (377, 501)])
def test_jpeg_draft_takes_the_factor_asked_for(tmp_path, hw):
    path = _jpeg(tmp_path / "a.jpg", hw)
    for k in (2, 4, 8):
        with Image.open(path) as im:
            assert jpeg_draft(im, k) == k
            assert im.size == (-(-hw[1] // k), -(-hw[0] // k))   # libjpeg's scaled size: ceil
            assert np.asarray(im.convert("RGB")).shape == (-(-hw[0] // k), -(-hw[1] // k), 3)


def _jpeg(path, hw, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    # a textured image: a smooth field plus fine noise (a JPEG of a photo, not of a flat colour)
    smooth = Image.fromarray(rng.integers(0, 256, (hw[0] // 16, hw[1] // 16, 3), np.uint8)).resize(
        (hw[1], hw[0]), Image.BILINEAR)
    arr = np.clip(np.asarray(smooth, np.int16) + rng.integers(-20, 21, (hw[0], hw[1], 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).convert(mode).save(path, quality=90)
    return str(path)


def _full(path, out, box):
    """The full-size path: decode whole (RGB), then the bilinear resize of the box."""
    with Image.open(path) as im:
        whole = np.asarray(im.convert("RGB"))
    return np.asarray(Image.fromarray(whole).resize((out[1], out[0]), Image.BILINEAR, box=box))


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return np.inf if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_decode_resized_against_the_full_size_path(tmp_path, mode):
    path = _jpeg(tmp_path / "a.jpg", (600, 800), mode=mode)
    img = EncodedImage.open(path)
    assert img.hw == (600, 800)
    for box, out in [((10, 20, 400, 300), (224, 224)),       # factor 1: bit for bit
                     ((0, 0, 800, 600), (224, 224)),         # factor 2
                     ((100, 50, 700, 550), (96, 96)),        # factor 4
                     ((0, 0, 800, 600), (64, 64))]:          # factor 8
        got, want = img.decode_resized(out, box), _full(path, out, box)
        assert got.shape == out + (3,) and got.dtype == np.uint8
        if draft_factor(img.hw, out, box) == 1:
            np.testing.assert_array_equal(got, want)
        else:
            assert _psnr(got, want) > 30, (box, out)
    np.testing.assert_array_equal(np.asarray(img), _full(path, (600, 800), None))  # whole


def test_png_has_no_draft_and_gives_the_full_size_path(tmp_path):
    path = str(tmp_path / "a.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)).save(path)
    np.testing.assert_array_equal(EncodedImage.open(path).decode_resized((64, 64)),
                                  _full(path, (64, 64), (0, 0, 400, 300)))


def _folder(root, sizes):
    for cls in ("a", "b"):
        os.makedirs(root / cls)
        for i, hw in enumerate(sizes):
            _jpeg(root / cls / f"{i}.jpg", hw, seed=i)
    return str(root)


@pytest.mark.parametrize("spec", ["rrc(32, scale=(0.5, 1))|flip|normalize('imagenet')",
                                  "resize_center_crop(32)|normalize('imagenet')",
                                  "flip|resize((32, 32))|normalize('imagenet')"])   # not first: decoded whole
def test_draft_source_through_a_transform(tmp_path, spec):
    # files 0 and 2 of a class: under 64 px high, so no crop of them keeps 2 x 32 px (factor 1);
    # file 1: every crop at scale >= 0.5 keeps more than 64 px (factor >= 2)
    root = _folder(tmp_path / "f", [(60, 80), (300, 400), (50, 60)])
    full, draft = sources.image_folder(root), sources.image_folder(root, decode="draft")
    assert isinstance(draft[0]["image"], EncodedImage) and draft[0]["label"] == full[0]["label"]
    tf = transforms.build(spec)
    for i in range(len(full)):
        rngs = [np.random.default_rng(i) for _ in range(2)]
        a, b = tf(dict(full[i]), rngs[0]), tf(dict(draft[i]), rngs[1])
        assert rngs[0].random() == rngs[1].random()   # the same draws: the same boxes
        assert a["image"].shape == b["image"].shape == (32, 32, 3)
        if i % 3 != 1 or spec.startswith("flip"):
            np.testing.assert_array_equal(a["image"], b["image"])   # small files or decoded whole
        else:
            assert np.abs(a["image"] - b["image"]).mean() < 0.05   # normalised units


def test_draft_errors_name_the_file(tmp_path):
    root = _folder(tmp_path / "f", [(300, 400)])
    bad = os.path.join(root, "a", "0.jpg")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[:len(data) // 3])   # the header reads, the pixels do not
    src = sources.image_folder(root, decode="draft")
    tf = transforms.build("rrc(32)|normalize('imagenet')")
    with pytest.raises(DataError, match=rf"image {bad}: truncated JPEG .*remove or replace the file"):
        tf(dict(src[0]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="decode='draft' decodes each file inside the transform"):
        sources.image_folder(root, decode="draft", skip_bad_images=True)


def test_config_checks(tmp_path):
    cfg = base_config()
    cfg.data.decode = "draft"      # mnist5k
    with pytest.raises(ConfigError, match=r"data.decode='draft' applies to image folders"):
        validate.validate(cfg)
    cfg.data.name, cfg.data.decode = f"folder:{_folder(tmp_path / 'f', [(40, 40)])}", "drafty"
    cfg.data.train_split = cfg.data.eval_split = "all"
    with pytest.raises(ConfigError, match=r"decode='drafty': use one of \('full', 'draft'\)"):
        validate.validate(cfg)
