"""Training end to end from a tfds dataset (offline mock) and from an image folder of PNGs."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tests.tiny_config import get_config
from vit_jax import metrics, train
from vit_jax.config_base import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_cifar_cct_recipe_trains_on_tfds_mock_data(tmp_path):
    """configs/cifar/cct.py's pieces through the loop (the small CCT-2/3x2 for speed): the inc1
    RandAugment, mixup switched off, timm's warm-up start and the cool-down at the floor lr."""
    cfg = load_config_file(os.path.join(ROOT, "configs/cifar/cct.py"), "model=cct_2_3x2_32")
    cfg.batch_size, cfg.eval_batch_size, cfg.log_every, cfg.data.workers = 8, 8, 1, 2
    cfg.num_epochs = 2.0                     # 40 mock images: 5 steps an epoch, 10 steps
    cfg.optim.warmup_epochs, cfg.optim.cooldown_epochs = 0.4, 0.4
    cfg.supervised.mixup_off_epochs = 1.0
    cfg.eval_every_epochs = cfg.checkpoint_every_epochs = 2.0
    cfg.tensorboard = cfg.progress = cfg.async_checkpoints = False
    with tfds.testing.mock_data(num_examples=40):
        summary = train.run(cfg, str(tmp_path))
    assert summary["step"] == 10 and 0.0 <= summary["eval/test/accuracy"] <= 1.0
    lrs = [r["train/lr"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl")) if "train/lr" in r]
    assert len(lrs) == 10 and lrs[-2:] == pytest.approx([1e-5, 1e-5])   # the cool-down holds end_lr
    assert lrs[0] == pytest.approx(1e-5) and max(lrs) == pytest.approx(5.5e-4, rel=0.1)  # from warmup_lr


@pytest.mark.parametrize("decode, ext", [("full", "png"), ("draft", "jpg")])
def test_train_on_image_folder(tmp_path, decode, ext):
    """PNGs decoded whole; JPEGs of 10-40 px with data.decode="draft" (crops of 16 px and more
    decode at half size for the 8-px output), through training and evaluation."""
    rs = np.random.default_rng(0)
    root = tmp_path / "images"
    high = 20 if ext == "png" else 40
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("cat", "dog", "emu"):
            os.makedirs(root / split / cls)
            for i in range(n):
                size = (int(rs.integers(10, high)), int(rs.integers(10, high)))
                Image.fromarray(rs.integers(0, 255, size + (3,), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.{ext}")
    cfg = short(get_config())
    cfg.data.name = f"folder:{root}"
    cfg.data.decode = decode
    cfg.data.train_transform = "rrc(8, scale=(0.5, 1))|flip|normalize('imagenet')"
    cfg.data.eval_transform = "resize_center_crop(8)|normalize('imagenet')"
    cfg.eval_batch_size = 8
    summary = train.run(cfg, str(tmp_path / "run"))
    assert summary["step"] == 4
    # 3 classes, evaluated on all 12 test images exactly once
    assert summary["eval/test/accuracy"] * 12 == round(summary["eval/test/accuracy"] * 12)
