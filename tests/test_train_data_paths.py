"""Training end to end from a tfds dataset (offline mock) and from an image folder of PNGs."""
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tests.tiny_config import get_config
from vit_jax import metrics, train


def short(cfg):
    cfg.total_steps, cfg.eval_every, cfg.checkpoint_every, cfg.log_every = 4, 4, 4, 2
    return cfg


def test_train_on_tfds_mock_data(tmp_path):
    cfg = short(get_config())
    cfg.data.name = "tfds:mnist"
    cfg.model_name = "vit_tiny_patch7_28"
    cfg.data.train_transform = "pad_crop(28, 2)|normalize('mnist')"
    cfg.data.eval_transform = "normalize('mnist')"
    with tfds.testing.mock_data(num_examples=40):
        summary = train.run(cfg, str(tmp_path))
    assert summary["step"] == 4 and 0.0 <= summary["eval/test/accuracy"] <= 1.0
    rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4]


def test_train_on_image_folder(tmp_path):
    rs = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("cat", "dog", "emu"):
            os.makedirs(root / split / cls)
            for i in range(n):
                size = (int(rs.integers(10, 20)), int(rs.integers(10, 20)))
                Image.fromarray(rs.integers(0, 255, size + (3,), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png")
    cfg = short(get_config())
    cfg.data.name = f"folder:{root}"
    cfg.data.train_transform = "rrc(8, scale=(0.5, 1))|flip|normalize('imagenet')"
    cfg.data.eval_transform = "resize_center_crop(8)|normalize('imagenet')"
    cfg.eval_batch_size = 8
    summary = train.run(cfg, str(tmp_path / "run"))
    assert summary["step"] == 4
    # 3 classes, evaluated on all 12 test images exactly once
    assert summary["eval/test/accuracy"] * 12 == round(summary["eval/test/accuracy"] * 12)
