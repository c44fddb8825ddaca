"""data.wire="uint8": the train transform stops before its final normalize, which runs on the
device; against the host op, through validation, and a run equal to the float32 wire's."""
import os

import jax
import numpy as np
import pytest

from tests.tiny_config import epochs_config, get_config
from vit_jax import metrics, train, validate
from vit_jax.config_base import load_config_file
from vit_jax.data import transforms
from vit_jax.data.device_normalize import DeviceNormalize
from vit_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("stats", ["imagenet", "mnist", "none"])
def test_device_normalize_against_the_host_op(stats):
    channels = 1 if stats == "mnist" else 3
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, channels), np.uint8)
    mean, std = transforms.get_stats(stats)
    got = np.asarray(DeviceNormalize(mean, std, channels)({"image": jax.numpy.asarray(images)})["image"])
    want = np.stack([transforms.normalize(im, stats) for im in images])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)   # bit for bit: the host's values, looked up


def test_before_normalize_gives_the_pixels():
    tf = transforms.build("pad_crop(8, 1)|flip|normalize('imagenet')")
    host, (mean, std) = tf.before_normalize()
    assert (mean, std) == transforms.get_stats("imagenet")
    ex = {"image": np.random.default_rng(1).integers(0, 256, (8, 8, 3), np.uint8), "label": 3}
    a, b = host(dict(ex), np.random.default_rng(5)), tf(dict(ex), np.random.default_rng(5))
    assert a["image"].dtype == np.uint8 and a["label"] == 3
    np.testing.assert_array_equal(transforms.normalize(a["image"], "imagenet"), b["image"])
    with pytest.raises(ValueError, match="'erase' follows normalize"):
        transforms.build("normalize('imagenet')|erase(0.5)").before_normalize()


def test_validation_of_the_wire():
    cfg = get_config()
    cfg.data.wire = "uint8"
    plan = validate.validate(cfg)
    assert isinstance(plan.on_device, DeviceNormalize) and plan.on_device.mean == (0.0,)
    assert plan.train_transform(dict(plan.train_source[0]), np.random.default_rng(0))["image"].dtype == np.uint8
    assert plan.example["image"].dtype == np.float32            # what the model sees
    assert validate.validate(get_config()).on_device is None    # float32, the default
    for change, message in (
            (dict(wire="u8"), r"data.wire='u8': use one of \('float32', 'uint8'\)"),
            (dict(wire="uint8", train_transform="pad_crop(8, 1)|normalize('none')|erase(0.5)"),
             r"data.wire='uint8' sends the pixels before data.train_transform's final normalize, "
             r"but 'erase' follows normalize")):
        cfg = get_config()
        cfg.data.update(change)
        with pytest.raises(ConfigError, match=message):
            validate.validate(cfg)
    cfg = load_config_file(os.path.join(ROOT, "configs/mnist5k/esvit.py:v,vit"))   # multi-crop: its own host step
    cfg.data.wire = "uint8"
    cfg.model.update(depth=1, width=16, num_heads=2, mlp_dim=32)
    with pytest.raises(ConfigError, match=r"data.wire='uint8' with objective='esvit': the method's own host step"):
        validate.validate(cfg)


def _rows(workdir):
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "wall_time_s"}
            for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def test_a_run_on_the_uint8_wire_equals_the_float32_run(finished_run, tmp_path):
    """The same run, bit for bit, whichever wire the images take."""
    cfg = epochs_config()
    cfg.data.wire = "uint8"
    train.run(cfg, str(tmp_path))
    assert _rows(str(tmp_path)) == _rows(finished_run[0])
