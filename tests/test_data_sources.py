"""Data sources: embedded splits (pinned forever), TFDS on mock data, image folders."""
from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds  # a hard dependency; needs no TensorFlow
from PIL import Image

from vit_jax.data import sources, transforms
from vit_jax.data.folder_source import PathTable


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).astype("<i8").tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------ embedded sets
# The hashes pin the test indices: a change here silently changes every reported test accuracy.
@pytest.mark.parametrize("name, n_train, n_test, per_class, shape, test_hash", [
    ("mnist5k", 4000, 1000, 100, (28, 28, 1), "999a5122399dcceb"),
    ("digits", 1397, 400, 40, (8, 8, 1), "5ef82dc64663429b"),
])
def test_embedded_splits(name, n_train, n_test, per_class, shape, test_hash):
    images, labels = (sources._mnist5k_arrays if name == "mnist5k" else sources._digits_arrays)()
    train_idx, test_idx = sources.stratified_split(labels, per_class)
    assert _digest(test_idx) == test_hash
    again = sources.stratified_split(labels, per_class)[1]  # stable across calls
    np.testing.assert_array_equal(again, test_idx)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert len(train_idx) + len(test_idx) == len(labels)
    assert np.all(np.diff(test_idx) > 0) and np.all(np.diff(train_idx) > 0)

    train, test, full = (sources.get_source(name, s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (n_train, n_test, n_train + n_test)
    np.testing.assert_array_equal(sources.class_counts(test), [per_class] * 10)
    assert sources.class_counts(train).sum() == n_train
    for src in (train, test, full):
        assert src.num_classes == 10 and src.image_shape == shape
    ex = test[3]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == shape
    assert isinstance(ex["label"], int)
    # the test source really holds the pinned rows of the full set
    np.testing.assert_array_equal(ex["image"], full[int(test_idx[3])]["image"])
    assert ex["label"] == full[int(test_idx[3])]["label"]
    d = sources.describe(name)
    assert (d["num_classes"], d["image_shape"]) == (10, shape)
    assert d["splits"] == ("train", "test", "all")
    assert d["num_examples"] == {"train": n_train, "test": n_test, "all": n_train + n_test}


def test_embedded_pixels():
    mn = sources.mnist5k("all")
    assert mn[0]["image"].max() == 255 and mn[0]["label"] == 0  # csv: pixels, then label last
    np.testing.assert_array_equal(sources.class_counts(mn), [500] * 10)
    dg = sources.digits("all")
    values = np.unique(dg.images)
    assert values[0] == 0 and values[-1] == 255 and len(values) == 17  # 0..16 -> 17 levels
    assert 128 in values  # 8 * 255 / 16 = 127.5 rounds to 128


def test_source_indexing_and_errors():
    src = sources.digits("test")
    np.testing.assert_array_equal(src[-1]["image"], src[len(src) - 1]["image"])
    assert src[np.int64(2)]["label"] == src[2]["label"]
    with pytest.raises(IndexError):
        src[len(src)]
    with pytest.raises(ValueError, match="valid splits: train, test, all"):
        sources.get_source("mnist5k", "validation")
    with pytest.raises(ValueError, match="tfds:NAME"):
        sources.get_source("imagenet", "train")
    with pytest.raises(ValueError, match="folder:"):
        sources.describe("tfds:")
    with pytest.raises(TypeError, match="no extra arguments"):
        sources.get_source("digits", "train", data_dir="/x")


# ------------------------------------------------------------------------------ TFDS (mocked)
@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock_end_to_end(name, shape):
    # mock_data replaces the array_record reader with random examples generated from the
    # builder's feature spec: no files, no network, no TensorFlow.
    with tfds.testing.mock_data(num_examples=6):
        src = sources.get_source(f"tfds:{name}", "train")
        assert len(src) == 6 and src.num_classes == 10 and src.image_shape == shape
        ex = src[5]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == shape
        assert isinstance(ex["label"], int) and 0 <= ex["label"] < 10
        d = sources.describe(f"tfds:{name}")
        assert d["num_classes"] == 10 and d["image_shape"] == shape
        out = transforms.build("rrc(16)|flip|normalize('none')")(ex, np.random.default_rng(0))
        assert out["image"].shape == (16, 16, shape[2]) and out["image"].dtype == np.float32
        with pytest.raises(KeyError, match="no feature 'img'"):
            sources.get_source(f"tfds:{name}", "train", image_key="img")


def test_tfds_variable_shape_and_not_prepared(tmp_path):
    with tfds.testing.mock_data(num_examples=2):
        src = sources.get_source("tfds:oxford_flowers102", "test")
        assert src.image_shape is None and src.num_classes == 102
        assert src[0]["image"].ndim == 3 and src[0]["image"].shape[2] == 3
    with pytest.raises(FileNotFoundError, match="not prepared"):  # no mock, empty data_dir
        sources.get_source("tfds:mnist", "train", data_dir=str(tmp_path))


def test_to_hwc_uint8_decodes_bytes():
    import io
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(buf, format="PNG")
    img = sources._to_hwc_uint8(buf.getvalue())
    assert img.shape == (5, 7, 1) and img.dtype == np.uint8 and img.max() == 9


# ------------------------------------------------------------------------------ image folders
def _write(path, size, mode="RGB", fmt="PNG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(len(path)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    (im.convert("L") if mode == "L" else im).save(path, format=fmt)


def test_image_folder_flat(tmp_path):
    root = tmp_path / "flat"
    _write(str(root / "zebra" / "b.png"), (10, 6))
    _write(str(root / "zebra" / "a.jpg"), (8, 8), fmt="JPEG")
    _write(str(root / "apple" / "x.PNG"), (5, 9), mode="L")  # grayscale and upper-case suffix
    (root / "apple" / "notes.txt").write_text("not an image")
    src = sources.get_source(f"folder:{root}", "all")
    assert src.classes == ["apple", "zebra"] and src.num_classes == 2 and src.image_shape is None
    assert [os.path.basename(f) for f in src.files] == ["x.PNG", "a.jpg", "b.png"]
    assert [src[i]["label"] for i in range(len(src))] == [0, 1, 1]
    shapes = [src[i]["image"].shape for i in range(3)]
    assert shapes == [(9, 5, 3), (8, 8, 3), (6, 10, 3)]  # always RGB, any size
    assert all(src[i]["image"].dtype == np.uint8 for i in range(3))
    assert sources.image_folder(str(root)).split == "all"
    d = sources.describe(f"folder:{root}")
    assert d == dict(num_classes=2, image_shape=None, splits=("all",), num_examples={})


def test_image_folder_splits(tmp_path):
    root = tmp_path / "ds"
    for split, cls in [("train", "cat"), ("train", "dog"), ("val", "dog")]:
        _write(str(root / split / cls / "0.png"), (4, 4))
    val = sources.image_folder(str(root), "val")
    assert val.classes == ["cat", "dog"] and len(val) == 1
    assert val[0]["label"] == 1  # ids from the union of classes, same in every split
    assert len(sources.get_source(f"folder:{root}", "train")) == 2
    assert sources.describe(f"folder:{root}")["splits"] == ("train", "val")
    with pytest.raises(ValueError, match="valid splits: train, val"):
        sources.image_folder(str(root), "test")
    with pytest.raises(ValueError, match="valid splits: train, val"):
        sources.image_folder(str(root))  # a split layout needs a split


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*root/CLASS_NAME"):
        sources.image_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders.*expected root/CLASS_NAME"):
        sources.image_folder(str(tmp_path / "empty"))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg images under .*noimg"):
        sources.get_source(f"folder:{tmp_path / 'noimg'}", "all")


def test_folder_paths_are_a_compact_table():
    """PathTable reads like the list of paths it replaces and pickles (to each grain worker) in
    less than half the bytes for an ImageNet-like folder (here 100 classes x 1,000 files)."""
    dirs = [f"/data/imagenet/train/n{c:08d}" for c in range(100)]
    names = [[f"n{c:08d}_{i:05d}.JPEG" for i in range(1000)] for c in range(100)]
    table = PathTable(dirs, names)
    paths = [os.path.join(d, n) for d, ns in zip(dirs, names) for n in ns]
    assert len(table) == 100_000 and table[54_321] == paths[54_321] and table == paths
    assert list(table)[-1] == paths[-1] and pickle.loads(pickle.dumps(table)) == paths
    assert len(pickle.dumps(table)) < 0.5 * len(pickle.dumps(paths))
    odd = PathTable(["/d"], [["é ü.png", "a.png"]])   # non-ASCII names survive
    assert list(odd) == ["/d/é ü.png", "/d/a.png"]
