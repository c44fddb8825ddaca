"""Data faults a user can fix (issue 13): bad image files, mixed image sizes, bad transform
arguments, corrupt TFDS records. Each is ONE message naming the file or key and the fix, raised
before any compile where it can be known, and nothing on disk changes."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import subprocess_run
from tests.disk import snapshot
from tests.tiny_config import get_config
from vit_jax import config_base, train, validate
from vit_jax.data import folder_source, grain_pipeline, pipeline, skipped_files, sources, transforms
from vit_jax.errors import ConfigError, DataError

HINT = "remove or replace the file, or set data.skip_bad_images=True to skip unreadable files"


def _image(path, size=(8, 8), fmt="PNG", seed=0):
    """A random RGB image of size (h, w) at path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return str(path)


def _truncated_jpeg(path, size=(32, 32)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        buf, format="JPEG")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])  # a valid header, half the scan data
    return str(path)


def _garbage_png(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"this is not a png at all " * 20)
    return str(path)


def _folder_config(root, train_transform="normalize('none')", eval_split=""):
    c = get_config()
    c.data.name = f"folder:{root}"
    c.data.train_split, c.data.eval_split = "all", eval_split
    c.data.train_transform = train_transform
    c.data.eval_transform = "normalize('none')"
    return c


# ------------------------------------------------------------------------------ 1. bad image files
def test_truncated_jpeg_names_the_file(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "a" / "0.png")
    bad = _truncated_jpeg(root / "b" / "1.jpg")
    before = snapshot(str(root))
    src = sources.get_source(f"folder:{root}", "all")
    assert src[0]["image"].shape == (8, 8, 3)  # good files decode exactly as before
    with pytest.raises(DataError) as e:
        src[1]
    msg = str(e.value)
    assert msg.startswith(f"image {bad}: truncated JPEG (")  # then PIL's own words
    assert msg.endswith(HINT)
    assert snapshot(str(root)) == before


def test_corrupt_png_names_the_file(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "a" / "0.png")
    bad = _garbage_png(root / "a" / "1.png")
    before = snapshot(str(root))
    src = sources.image_folder(str(root))
    with pytest.raises(DataError) as e:
        src[1]
    assert str(e.value) == (f"image {bad}: not a readable image: PIL cannot identify its format; "
                            f"{HINT}")
    with pytest.raises(DataError, match="not a readable image"):  # headers too (mixed-size check)
        src.image_sizes()
    assert snapshot(str(root)) == before


def test_skip_bad_images_replaces_deterministically_and_notes_once(tmp_path, capsys):
    root = tmp_path / "imgs"
    good = [_image(root / "a" / f"{k}.png", seed=k) for k in (0, 2)]
    bad = [_garbage_png(root / "a" / "1.png"), _truncated_jpeg(root / "b" / "3.jpg")]
    before = snapshot(str(root))
    src = sources.get_source(f"folder:{root}", "all", skip_bad_images=True)
    assert src.files == [good[0], bad[0], good[1], bad[1]]
    ref = sources.image_folder(str(root))
    # a bad index takes the next readable file (wrapping around), with that file's label
    for i, j in [(0, 0), (1, 2), (2, 2), (3, 0)]:
        np.testing.assert_array_equal(src[i]["image"], ref[j]["image"])
        assert src[i]["label"] == ref[j]["label"]
    src[1], src[3], src[1]  # noqa: B018  (again: noted once only)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0] == (f"note: skipping unreadable image {bad[0]}: not a readable image: PIL "
                      "cannot identify its format (data.skip_bad_images=True)")
    assert out[1].startswith(f"note: skipping unreadable image {bad[1]}: truncated JPEG (")
    assert out[1].endswith(") (data.skip_bad_images=True)")
    assert src.skipped == 2
    # the pipeline stays a pure function of the step, whichever reader met a bad file first
    fresh = sources.image_folder(str(root), skip_bad_images=True)
    tf = transforms.build("normalize('none')")
    a = pipeline.TrainPipeline(src, tf, 4, seed=0, workers=1).batch_at(3)
    b = pipeline.TrainPipeline(fresh, tf, 4, seed=0, workers=2).batch_at(3)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert snapshot(str(root)) == before


def test_skip_bad_images_all_bad_and_config_key(tmp_path):
    root = tmp_path / "imgs"
    _garbage_png(root / "a" / "0.png")
    src = sources.image_folder(str(root), skip_bad_images=True)
    with pytest.raises(DataError, match="none of the 1 images under .* can be read"):
        src[0]
    c = config_base.base_config()
    assert c.data.skip_bad_images is False
    assert validate.source_kwargs(c.data) == {}
    c.data.skip_bad_images = True
    with pytest.raises(ConfigError, match=r"data.skip_bad_images=True applies to image folders "
                                          r"\(data.name='folder:/path'\), not to "
                                          r"data.name='mnist5k'; remove it"):
        validate.source_kwargs(c.data)
    c.data.name = f"folder:{root}"
    assert validate.source_kwargs(c.data) == {"skip_bad_images": True}
    with pytest.raises(TypeError, match="takes only skip_bad_images"):
        sources.get_source(f"folder:{root}", "all", data_dir="/x")


def test_truncated_first_file_fails_before_compile_with_its_name(tmp_path):
    root, wd = tmp_path / "imgs", tmp_path / "wd"
    bad = _truncated_jpeg(root / "a" / "0.jpg", size=(8, 8))
    _image(root / "a" / "1.png")
    before = snapshot(str(tmp_path))
    with pytest.raises(DataError, match=f"^image {bad}: truncated JPEG"):
        train.run(_folder_config(root), str(wd))  # a DataError, not wrapped in a ConfigError
    assert snapshot(str(tmp_path)) == before and not wd.exists()


def test_cli_prints_one_line_for_a_bad_image(tmp_path):
    root, wd = tmp_path / "imgs", tmp_path / "wd"
    bad = _garbage_png(root / "a" / "0.png")
    _image(root / "a" / "1.png")
    before = snapshot(str(tmp_path))
    r = subprocess_run.run(str(wd), f"--config.data.name=folder:{root}",
                           "--config.data.train_split=all", "--config.data.eval_split=",
                           "--config.data.train_transform=normalize('none')")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: image {bad}: not a readable image: PIL cannot identify its format; {HINT}")
    assert "Traceback" not in r.stderr
    assert snapshot(str(tmp_path)) == before


# ------------------------------------------------------------------------------ 2. mixed sizes
def test_stack_names_shapes_files_and_fix(tmp_path):
    root = tmp_path / "imgs"
    small = _image(root / "a" / "0.png", (28, 28))
    big = _image(root / "a" / "1.png", (32, 32))
    tf = transforms.build("normalize('none')")
    src = sources.image_folder(str(root))
    with pytest.raises(DataError) as e:
        next(pipeline.eval_batches(src, lambda ex: tf(ex), 2, workers=1))
    assert str(e.value) == (
        f"images of different shapes in one batch: (28, 28, 3) ({small}) and (32, 32, 3) ({big}); "
        "add resize((H, W)) or a fixed-size crop (rrc(S), center_crop(S), resize_center_crop(S), "
        "pad_crop(S, P)) to data.train_transform / data.eval_transform so every image has the "
        "same size")
    with pytest.raises(DataError, match=r"images of different shapes in one batch: \(\d\d, "):
        pipeline.TrainPipeline(src, tf, 2, seed=0, workers=1).batch_at(0)
    # the grain loader names the files too, in this process and from a worker process
    for workers in (0, 1):
        g = grain_pipeline.GrainTrainPipeline(src, tf, 2, seed=0, workers=workers)
        with pytest.raises(Exception, match=r"images of different shapes in one batch: .*"
                                            r"\(.*/a/[01].png\) and .*\(.*/a/[01].png\)"):
            next(g)
        g.close()
    with pytest.raises(DataError, match="values of 'mask' of different shapes.*example 1"):
        pipeline.stack([{"mask": np.zeros(3)}, {"mask": np.zeros(4)}],
                        lambda r: f"example {r}")


def test_mixed_sizes_found_from_headers(tmp_path):
    root = tmp_path / "imgs"
    files = [_image(root / "a" / f"{k}.png", (8, 8) if k != 7 else (8, 12)) for k in range(10)]
    src = sources.image_folder(str(root))
    sizes = src.image_sizes(max_files=4)
    assert sorted(sizes) == [0, 3, 6, 9] and sizes[0] == (8, 8)  # evenly spread, first and last
    assert src.image_sizes()[7] == (8, 12)
    fixed = transforms.build("normalize('none')")
    a, b = pipeline.mixed_sizes(src, fixed)
    assert a == (files[0], (8, 8), (8, 8, 3)) and b == (files[7], (8, 12), (8, 12, 3))
    assert pipeline.mixed_sizes(src, transforms.build("resize(8)")) == (  # aspect kept: differs
        (files[0], (8, 8), (8, 8, 3)), (files[7], (8, 12), (8, 12, 3)))
    assert pipeline.mixed_sizes(src, transforms.build("resize((8, 8))")) is None
    assert pipeline.mixed_sizes(src, transforms.build("center_crop(6)")) is None
    arrays = sources.ArraySource(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2), 1)
    assert pipeline.mixed_sizes(arrays, fixed) is None  # a fixed-shape source: nothing to check


def test_mixed_sizes_fail_before_compile(tmp_path):
    root, wd = tmp_path / "imgs", tmp_path / "wd"
    _image(root / "a" / "0.png", (8, 8))
    odd = _image(root / "b" / "1.png", (10, 8))
    before = snapshot(str(tmp_path))
    with pytest.raises(ConfigError) as e:
        train.run(_folder_config(root), str(wd))
    assert str(e.value) == (
        f"data.train_transform=\"normalize('none')\" gives images of different shapes: "
        f"{root / 'a' / '0.png'} (8x8) -> (8, 8, 3) but {odd} (10x8) -> (10, 8, 3); add "
        "resize((H, W)) or a fixed-size crop (rrc(S), center_crop(S), resize_center_crop(S), "
        "pad_crop(S, P)) to data.train_transform so every image has the same size")
    c = _folder_config(root, train_transform="resize((8, 8))|normalize('none')", eval_split="all")
    with pytest.raises(ConfigError, match=r"^data.eval_transform=\"normalize\('none'\)\" gives "
                                          "images of different shapes"):
        train.run(c, str(wd))  # the eval transform is checked on the eval split too
    c = _folder_config(root, train_transform="pad_crop(16, 2)|normalize('none')")
    with pytest.raises(ConfigError) as e:
        train.run(c, str(wd))
    assert str(e.value) == (
        f"data.train_transform=\"pad_crop(16, 2)|normalize('none')\" fails on split 'all' "
        f"({root / 'a' / '0.png'}): ValueError: pad_crop: crop 16x16 larger than the padded image "
        "12x12: resize the image first, or crop smaller")
    big = _image(root / "0" / "big.png", (20, 20))  # sorts first: the small file fails later
    with pytest.raises(ConfigError) as e:
        train.run(_folder_config(root, "pad_crop(16, 2)|normalize('none')"), str(wd))
    assert str(e.value) == (
        f"data.train_transform=\"pad_crop(16, 2)|normalize('none')\" fails on split 'all': "
        f"ValueError: {root / 'a' / '0.png'} (8x8): pad_crop: crop 16x16 larger than the padded "
        "image 12x12: resize the image first, or crop smaller")
    os.remove(big)
    os.rmdir(os.path.dirname(big))
    assert snapshot(str(tmp_path)) == before and not wd.exists()


# ------------------------------------------------------------------------------ 3. transform args
@pytest.mark.parametrize("spec, message", [
    ("rrc(28, scale=(1.5, 0.2))",
     "rrc: scale=(1.5, 0.2) must be a pair (low, high) with 0 < low <= high"),
    ("random_resized_crop(28, ratio=(0, 1))", "random_resized_crop: ratio=(0, 1) must be a pair"),
    ("rrc(28, scale=0.5)", "rrc: scale=0.5 must be a pair (low, high)"),
    ("rrc(0)", "rrc: size=0 must be a positive int or a pair (height, width) of positive ints"),
    ("resize((28, -2))", "resize: size=(28, -2) must be a positive int"),
    ("center_crop(28.5)", "center_crop: size=28.5 must be a positive int"),
    ("flip(p=1.5)", "flip: p=1.5 must be a probability in [0, 1]"),
    ("resize_center_crop(28, crop_pct=87.5)",
     "resize_center_crop: crop_pct=87.5 must be in (0, 1]"),
    ("pad_crop(28, -1)", "pad_crop: padding=-1 must be an int >= 0"),
    ("pad_crop(28, 2, fill=300)", "pad_crop: fill=300 must be an int in [0, 255]"),
    ("randaug(2, 15)", "randaug: magnitude=15 must be in [0, 10] (RandAugment levels)"),
    ("randaug(2, 9, prob=2)", "randaug: prob=2 must be a probability in [0, 1]"),
    ("normalize((0.5,), (0,))", "normalize: std=(0.0,) must be positive numbers"),
])
def test_bad_transform_arguments_name_op_and_argument(spec, message):
    with pytest.raises(ValueError) as e:
        transforms.build(spec)
    assert str(e.value).startswith(message)
    with pytest.raises(ConfigError) as e:  # what `config error: ...` prints
        validate._transform(spec, "train_transform", {})
    assert str(e.value).startswith(f"data.train_transform={spec!r}: {message}")


def test_the_issue_example_and_unknown_op(tmp_path):
    c = get_config()
    c.data.train_transform = "rrc(28, scale=(1.5, 0.2))"
    with pytest.raises(ConfigError) as e:
        train.run(c, str(tmp_path / "wd"))
    assert str(e.value) == ("data.train_transform='rrc(28, scale=(1.5, 0.2))': rrc: scale=(1.5, "
                            "0.2) must be a pair (low, high) with 0 < low <= high")
    assert not (tmp_path / "wd").exists()
    with pytest.raises(ConfigError) as e:
        validate._transform("rcc(28)|normalize", "eval_transform", {})
    assert str(e.value) == (
        "data.eval_transform='rcc(28)|normalize': unknown transform 'rcc' in 'rcc(28)'; valid: "
        + ", ".join(sorted([*transforms.OPS, *transforms.ALIASES])))
    good = transforms.build("rrc(28, scale=(0.5, 1.0))|flip(p=0.0)|randaug(2, 9)")
    assert good({"image": np.zeros((8, 8, 3), np.uint8), "label": 0},
                np.random.default_rng(0))["image"].shape == (28, 28, 3)


def test_apply_time_error_names_the_op():
    tf = transforms.build("pad_crop(28, 2)")
    with pytest.raises(ValueError, match=r"^pad_crop: crop 28x28 larger than the padded image "
                                         r"12x12: resize the image first, or crop smaller$"):
        tf({"image": np.zeros((8, 8, 3), np.uint8), "label": 0}, np.random.default_rng(0))


# ------------------------------------------------------------------------------ TFDS records
class _Records:
    def __init__(self, records=None, error=None):
        self.records, self.error = records or [], error

    def __len__(self):
        return max(len(self.records), 3)

    def __getitem__(self, i):
        if self.error:
            raise self.error
        return self.records[i]


def _tfds(ds):
    src = object.__new__(sources.TfdsSource)  # no tfds files needed: the decode path only
    src.name, src.split, src.image_key, src.label_key, src._ds = "cifar10", "train[:10%]", \
        "image", "label", ds
    return src


def test_corrupt_tfds_record_names_split_and_index():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)).save(
        buf, format="PNG")
    png = buf.getvalue()
    src = _tfds(_Records([{"image": png, "label": 1}, {"image": b"\x89PNG garbage", "label": 2},
                          {"image": png[:len(png) // 2], "label": 3}]))
    assert src[0]["image"].shape == (16, 16, 3)
    fix = "the record is corrupt: rebuild the dataset (`tfds build cifar10 " \
          "--file_format=array_record --overwrite`)"
    with pytest.raises(DataError) as e:
        src[1]
    assert str(e.value) == ("tfds:cifar10 split 'train[:10%]' index 1: cannot decode its image: "
                            f"not a readable image: PIL cannot identify its format; {fix}")
    with pytest.raises(DataError, match=r"index 2: cannot decode its image: truncated image \("):
        src[-1]
    # tfds decodes most image features itself: its PIL error gets the record's name too
    with pytest.raises(DataError) as e:
        _tfds(_Records(error=OSError("image file is truncated")))[2]
    assert str(e.value) == ("tfds:cifar10 split 'train[:10%]' index 2: cannot be read (OSError: "
                            f"image file is truncated); {fix}")
    with pytest.raises(IndexError):  # the plain `for x in src` protocol still ends
        _tfds(_Records(error=IndexError()))[5]
    assert folder_source.check_index(-1, 3) == 2


def test_bad_image_in_a_grain_worker_stops_the_run_with_its_file(tmp_path):
    """data.loader="grain": the worker process' error reaches the run with the file's name."""
    root = tmp_path / "imgs"
    for i in range(6):
        _image(root / "a" / f"{i}.png", seed=i)
    bad = _truncated_jpeg(root / "b" / "9.jpg", size=(8, 8))
    src = sources.get_source(f"folder:{root}", "all")
    tf = transforms.build("normalize('none')")
    g = grain_pipeline.GrainTrainPipeline(src, tf, 7, seed=0, workers=2)
    with pytest.raises(Exception, match=f"image {bad}: truncated JPEG") as e:
        for _ in range(3):   # every batch holds every image
            next(g)
    g.close()
    assert isinstance(e.value, DataError) or "DataError" in repr(e.value) + str(e.value)


@pytest.mark.parametrize("loader", ["threads", "grain"])
def test_skipped_images_are_counted_in_the_metrics_by_either_loader(tmp_path, loader):
    """data.skip_bad_images=True: metrics.jsonl logs data/skipped_images, the distinct unreadable
    files the batches met, also when grain's worker processes (each its own copy of the source)
    met them."""
    root = tmp_path / "imgs"
    for i in range(6):
        _image(root / "a" / f"{i}.png", seed=i)
    _garbage_png(root / "b" / "7.png")
    _truncated_jpeg(root / "b" / "8.jpg", size=(8, 8))
    c = _folder_config(root)
    c.data.skip_bad_images, c.data.loader, c.data.workers = True, loader, 2
    c.total_steps, c.checkpoint_every, c.eval_every = 4, 0, 0
    c.batch_size = 8   # every batch holds every file
    wd = tmp_path / "wd"
    train.run(c, str(wd))
    rows = [json.loads(line) for line in open(wd / "metrics.jsonl")]
    counts = [r["data/skipped_images"] for r in rows if "data/skipped_images" in r]
    assert counts and counts[-1] == 2
    assert counts == sorted(counts)


def test_batches_carry_the_unreadable_files_they_found(tmp_path):
    """A batch lists the files it found unreadable (once: the next batch does not repeat them);
    `SkippedFiles.take` removes the entry before the devices see the batch."""
    root = tmp_path / "imgs"
    for i in range(3):
        _image(root / "a" / f"{i}.png", seed=i)
    _garbage_png(root / "b" / "9.png")
    src = sources.image_folder(str(root), skip_bad_images=True)
    make = pipeline.TrainBatch.of_process(src, transforms.build("normalize('none')"), 4, 0, 0, 1, False)
    first, second = make(0), make(1)
    np.testing.assert_array_equal(first[skipped_files.KEY], [3])
    assert skipped_files.KEY not in second
    count = skipped_files.SkippedFiles()
    assert set(count.take(first)) == {"image", "label"} and len(count) == 1
    count.take(dict(first, **{skipped_files.KEY: np.array([3])}))
    assert len(count) == 1   # a union: a file met again (another worker's copy) counts once
