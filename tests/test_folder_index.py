"""An image folder's file list lives in a memory-mapped index, once per host: the source pickled
into each grain worker does not grow with the number of files, and reads the same rows."""
from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import path_table, sources
from vit_jax.data.path_table import PathTable


def _empty_files(root, per_class: dict[str, int]) -> None:
    # listing a folder reads no image, so empty files stand in for a large folder
    for cls, n in per_class.items():
        os.makedirs(root / cls)
        for k in range(n):
            (root / cls / f"{k:06d}.jpg").touch()


def _image(path, size, seed, fmt="PNG") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def test_a_pickled_folder_source_does_not_grow_with_its_files(tmp_path):
    small, large = tmp_path / "aaaaa", tmp_path / "bbbbb"   # same length: same bytes for the root
    _empty_files(small, {"a": 5, "b": 5})
    _empty_files(large, {"a": 1000, "b": 1000})
    few, many = sources.image_folder(str(small)), sources.image_folder(str(large))
    assert (len(few), len(many)) == (10, 2000)
    assert len(pickle.dumps(many)) <= len(pickle.dumps(few)) + 16   # a few digits of the counts
    assert len(pickle.dumps(many)) < 2000
    back = pickle.loads(pickle.dumps(many))
    assert list(back.files) == list(many.files) and list(back.labels) == [0] * 1000 + [1] * 1000
    assert not [f for f in os.listdir(large) if not os.path.isdir(large / f)]   # nothing written there


def test_an_unpickled_folder_source_reads_the_same_rows(tmp_path):
    root = tmp_path / "ds"
    _image(str(root / "train" / "zebra" / "b.png"), (10, 6), 0)
    _image(str(root / "train" / "zebra" / "a é.jpg"), (9, 7), 1, fmt="JPEG")   # non-ASCII name
    _image(str(root / "train" / "apple" / "x.PNG"), (5, 9), 2)
    _image(str(root / "val" / "zebra" / "c.png"), (4, 4), 3)   # val lacks "apple": label ids kept
    for split in ("train", "val"):
        for decode in ("full", "draft"):
            src = sources.image_folder(str(root), split, decode=decode)
            back = pickle.loads(pickle.dumps(src))
            assert back.classes == src.classes == ["apple", "zebra"]
            assert list(back.files) == list(src.files) and len(back) == len(src)
            assert list(back.labels) == list(src.labels)
            for i in range(len(src)):
                a, b = src[i], back[i]
                assert a["label"] == b["label"]
                if decode == "draft":   # the header read now, the pixels on use
                    assert (a["image"].path, a["image"].hw) == (b["image"].path, b["image"].hw)
                np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    train = sources.image_folder(str(root), "train")
    assert [os.path.basename(f) for f in train.files] == ["x.PNG", "a é.jpg", "b.png"]
    assert list(train.labels) == [0, 1, 1]
    assert list(sources.image_folder(str(root), "val").labels) == [1]


def test_one_index_per_listing_rewritten_if_deleted(tmp_path):
    dirs, names = ["/d/a", "/d/b"], [["1.png", "2.png"], ["3.png"]]
    one, two = PathTable(dirs, names), PathTable(dirs, iter(names))
    state = one.__getstate__()
    assert state["folder"] == two.__getstate__()["folder"]   # content-addressed: shared
    assert state["folder"].startswith(path_table.index_root())
    shutil.rmtree(state["folder"])   # e.g. the temp dir cleaned under a live run
    back = pickle.loads(pickle.dumps(one))   # the pickle writes it again from the mapping
    assert list(back) == list(one) == ["/d/a/1.png", "/d/a/2.png", "/d/b/3.png"]
    assert back[-1] == "/d/b/3.png" and list(back.dir_index) == [0, 0, 1]
    with pytest.raises(IndexError):
        back[3]


def test_an_unwritable_index_keeps_the_table_in_memory(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, where the index folder's parent should be")
    monkeypatch.setattr(path_table, "index_root", lambda: str(blocker / "index"))
    table = PathTable(["/d"], [["b.png", "a.png"]])
    assert "cannot write the folder index" in capsys.readouterr().out
    back = pickle.loads(pickle.dumps(table))
    assert list(back) == list(table) == ["/d/b.png", "/d/a.png"]
