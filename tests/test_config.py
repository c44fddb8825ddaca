"""Every bad config stops with a clear ConfigError before anything is compiled."""
import jax
import pytest

from tests import subprocess_run
from tests.tiny_config import get_config
from vit_jax import train, validate

BAD = [
    ("model_name", "vit_nonsense_patch2_8", "Unknown model"),
    ("model_name", "vit_tiny_patch3_8", "divisible"),
    ("model.width", 15, "divisible"),
    ("model.in_channels", 3, "channel"),
    ("batch_size", 12, "not divisible by the 8 devices"),
    ("batch_size", 0, "batch_size=0 must be positive"),
    ("grad_accum_steps", 3, "grad_accum_steps=3"),
    ("mesh.data", 3, "does not fit 8 device"),
    ("mesh.fsdp", -1, "at most one -1"),
    ("objective", "simclr", "unknown; choose one of"),
    ("optim.lr", -1.0, "optim.lr=-1.0 must be a positive"),
    ("optim.name", "adam", "optim.name='adam': use one of"),
    ("optim.schedule", "exponential", "optim.schedule='exponential'"),
    ("optim.warmup_steps", 100, "exceed the 12 training steps"),
    ("optim.cooldown_epochs", 100.0, r"cooldown \(optim.cooldown_\*: \d+ steps\) exceed the 12"),
    ("optim.start_lr", 1.0, r"optim.start_lr=1.0 \(where the warmup starts\) must be in \[0, optim.lr"),
    ("supervised.mixup_off_epochs", -1.0, "supervised.mixup_off_epochs=-1.0 must be >= 0"),
    ("optim.b2", 1.0, "must be in \\[0, 1\\)"),
    ("total_steps", -3, "total_steps=-3"),
    ("optim.layer_decay", 0.0, "layer_decay=0.0"),
    ("init_from", "/nonexistent/run", "is not a directory"),
    ("data.name", "cifar11", "data:"),
    ("data.train_split", "validation", "data:"),
    ("data.train_transform", "flip|sharpen|normalize('none')", "unknown transform 'sharpen'"),
    ("data.train_transform", "resize((12, 12))|normalize('none')", "make their sizes agree"),
    ("data.eval_transform", "normalize('imagenet')", r"data.eval_transform=.*fails on split 'test' .*does not fit a 1-channel image"),
    ("supervised.label_smoothing", 1.0, "label_smoothing=1.0"),
    ("supervised.mixup_alpha", -0.2, "mixup_alpha"),
    ("ema_decay", 1.0, "ema_decay=1.0"),
    ("data.loader", "torch", "data.loader='torch': use 'threads'"),
    ("data.read_threads", 0, "data.read_threads=0"),
    ("dtype", "float16", "dtype='float16'"),
    ("log_every", 0, "log_every must be"),
    ("keep_checkpoints", 0, "keep_checkpoints=0"),
]


def set_key(cfg, dotted, value):
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[last] = value


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_config_fails_before_compiling(key, value, message, monkeypatch, tmp_path):
    cfg = get_config()
    with cfg.unlocked():
        set_key(cfg, key, value)

    def no_compile(*a, **k):
        raise AssertionError("jax.jit was called before the config was validated")
    monkeypatch.setattr(jax, "jit", no_compile)
    with pytest.raises(validate.ConfigError, match=message):
        train.run(cfg, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()  # nothing was created for a run that cannot start


def test_cli_misspelt_key_and_bad_value(tmp_path):
    out = subprocess_run.run(str(tmp_path / "a"), "--config.optim.learning_rate=0.1", timeout=120)
    assert out.returncode != 0 and "learning_rate" in out.stderr
    out = subprocess_run.run(str(tmp_path / "b"), "--config.batch_size=-4", timeout=120)
    assert out.returncode == 2 and "config error: batch_size=-4 must be positive" in out.stderr
    assert not (tmp_path / "b").exists()
