"""Command-line and file faults a user can fix (issue 13): a misspelt --config.key, a value of
the wrong type, a missing or broken config file, an exception in get_config(ARG), a truncated
config.json in a workdir, a damaged Hugging Face folder. Each is ONE line naming the file or key
(no traceback), the exit code of its error class, and nothing on disk changes (a workdir named
on a failing command line is not created)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import subprocess_run
from tests.disk import snapshot
from vit_jax import convert, runs
from vit_jax.errors import ConfigError
from vit_jax.models.vit import ViT

TRUNCATED = '{"model_name": "vit_tiny_patch7_28", "model": {"wid'  # a run killed while writing
JSON_HINT = "the workdir's config.json is not valid JSON (truncated?); restore it or point at another run"


def _cli(config: str, workdir: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess_run.run_command([sys.executable, "-m", "vit_jax.main", "--config", config,
                                       "--workdir", workdir, *flags], timeout=120)


def _arg_workdir(tmp_path) -> str:
    """A pre-training workdir whose config.json was cut off mid-write."""
    os.makedirs(tmp_path / "pre")
    (tmp_path / "pre" / "config.json").write_text(TRUNCATED)
    return str(tmp_path / "pre")


# ------------------------------------------------------------------------------ 1.-3. the CLI
# (config, extra flags) -> the whole stderr: one line. {tmp} is tmp_path.
CLI = {
    "misspelt_key": ("configs/quickstart.py", ["--config.optim.learning_rate=0.1"],
                     "config error: --config.optim.learning_rate: no such key in configs/quickstart.py "
                     "(did you mean optim.lr?)"),
    "misspelt_deep_key": ("configs/quickstart.py", ["--config.data.trian_transform=x"],
                          "config error: --config.data.trian_transform: no such key in "
                          "configs/quickstart.py (did you mean data.train_transform?)"),
    "bad_value_type": ("configs/quickstart.py", ["--config.batch_size=abc"],
                       "config error: --config.batch_size=abc: not a valid int (the config has batch_size=64)"),
    "missing_file": ("configs/nope.py", [],
                     "config error: --config configs/nope.py: no such config file "
                     f"(a relative path starts at {subprocess_run.ROOT})"),
    "syntax_error": ("{tmp}/bad.py", [],
                     "config error: {tmp}/bad.py, line 2: syntax error: '(' was never closed"),
    # get_config(ARG) raises
    "get_config_raises": ("{tmp}/raises.py:oops", [],
                          "config error: {tmp}/raises.py:oops: get_config('oops') raised "
                          "ValueError: unknown ARG 'oops' (at {tmp}/raises.py:2"),
    # config_base.backbone_of_run reads the ARG run's config.json
    "truncated_arg_workdir": ("configs/mnist5k/knn.py:{tmp}/pre", [],
                              "config error: {tmp}/pre/config.json: Unterminated string "
                              f"at line 1 column 48: {JSON_HINT}"),
    # init_from=ARG: train.run reads the run through runs.load_config
    "truncated_init_from": ("configs/mnist5k/finetune.py:{tmp}/pre", [],
                            "config error: init_from={tmp}/pre: {tmp}/pre/config.json: Unterminated string "
                            f"at line 1 column 48: {JSON_HINT}"),
}


@pytest.mark.parametrize("case", list(CLI))
def test_cli_user_mistake_is_one_line(case, tmp_path):
    config, flags, want = (x.replace("{tmp}", str(tmp_path)) if isinstance(x, str) else x
                           for x in CLI[case])
    (tmp_path / "bad.py").write_text("def get_config(arg=''):\n    x = (1,\n    return x\n")
    (tmp_path / "raises.py").write_text("def get_config(arg=''):\n    raise ValueError(f'unknown ARG {arg!r}')\n")
    _arg_workdir(tmp_path)
    before = snapshot(str(tmp_path))
    out = _cli(config, str(tmp_path / "w"), *flags)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(want), out.stderr
    assert snapshot(str(tmp_path)) == before  # the workdir w was not created, nothing was written


# ------------------------------------------------------------------------------ 3. runs.load_config
@pytest.mark.parametrize("content,message", [
    (TRUNCATED, re.escape(f"config.json: Unterminated string at line 1 column 48: {JSON_HINT}")),
    ("", re.escape(f"config.json: Expecting value at line 1 column 1: {JSON_HINT}")),
    ("[1, 2]", "config.json holds a JSON list, not the object of a run's config"),
    (None, "config.json does not exist: .* is not a vit_jax workdir"),
], ids=["truncated", "empty", "list", "missing"])
def test_load_config_names_the_file(content, message, tmp_path):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    before = snapshot(str(tmp_path))
    with pytest.raises(ConfigError, match=message) as e:
        runs.load_config(str(tmp_path))
    assert str(tmp_path / "config.json") in str(e.value) and "\n" not in str(e.value)
    assert snapshot(str(tmp_path)) == before


# ------------------------------------------------------------------------------ 4. convert.load_hf
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A valid tiny ViTModel folder written by the package's own exporter (zero weights: shapes
    are all that matter here, and eval_shape + zeros needs no compile)."""
    module = ViT(num_classes=0, patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=16)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 3), np.float32))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    folder = convert.save_hf(module, variables, tmp_path_factory.mktemp("hf") / "vit")
    convert.load_hf(folder)  # the uncorrupted folder loads
    return folder


def _copy(folder, dst):
    dst.mkdir()
    for name in os.listdir(folder):
        (dst / name).write_bytes((folder / name).read_bytes())
    return dst


def _corrupt(folder, case):
    if case == "config_not_json":
        (folder / "config.json").write_text('{"architectures": ["ViTModel"], "hidden_')
    elif case == "config_not_object":
        (folder / "config.json").write_text('["ViTModel"]')
    elif case == "garbage_safetensors":
        (folder / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(300))
    elif case == "truncated_safetensors":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:len(data) // 2])
    elif case == "no_config":
        os.remove(folder / "config.json")
    elif case == "no_weights":
        os.remove(folder / "model.safetensors")
    elif case == "garbage_bin":
        os.remove(folder / "model.safetensors")
        (folder / "pytorch_model.bin").write_bytes(np.random.default_rng(0).bytes(300))
    elif case == "sharded_index_not_json":
        os.rename(folder / "model.safetensors", folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text('{"weight_map": {')


HF_FAULTS = {
    "config_not_json": (r"config.json is not valid JSON \(Unterminated string starting at: line 1 column 33 \(char 32\); "
                        r"truncated\?\)", "config.json"),
    "config_not_object": ("config.json holds a JSON list, not a model config object", "config.json"),
    "garbage_safetensors": (r"model.safetensors is not a readable safetensors file \(Error while deserializing "
                            "header: header too large", "model.safetensors"),
    "truncated_safetensors": ("model.safetensors is not a readable safetensors file", "model.safetensors"),
    "no_config": ("has no config.json", ""),
    "no_weights": ("no weights in .*expected model.safetensors", ""),
    "garbage_bin": (r"pytorch_model.bin is not a readable PyTorch file \(", "pytorch_model.bin"),
    "sharded_index_not_json": ("model.safetensors.index.json is not valid JSON", "model.safetensors.index.json"),
}


@pytest.mark.parametrize("case", list(HF_FAULTS))
def test_load_hf_damaged_folder_is_a_conversion_error(case, hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path / "m")
    _corrupt(folder, case)
    message, name = HF_FAULTS[case]
    before = snapshot(str(folder))
    with pytest.raises(convert.ConversionError, match=message) as e:
        convert.load_hf(folder)
    assert str(folder / name) in str(e.value) and "\n" not in str(e.value)
    assert snapshot(str(folder)) == before
