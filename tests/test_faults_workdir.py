"""Fault injection on workdirs and checkpoints: every failure is one clear error, and a failing
run changes nothing on disk (every file hashed before and after); runs that can go on say what
they did. Most cases fail before any compile; the shared `finished_run` (tests/conftest.py) has
checkpoints at steps 4, 8 and 12.

Where each fault of issue 13 is tested (numbers as in the issue):
  1, 12  resume with another model / objective / batch size   here (test_resume_with_*)
  2      damaged or unreadable checkpoints, digests            here
  3      init_from on a workdir with checkpoints                here
  4, 5   metrics without checkpoints, torn or broken lines      here
  6      MAE masking nothing, a single-class folder             here
  7      truncated / corrupt images, mixed sizes                tests/test_faults_data.py
  8      failures after validation create nothing              here (init_from, seed, file, read-only)
  9      the NaN guard before the first checkpoint              here
  10     misspelt keys, config files, config.json, load_hf,     tests/test_faults_cli.py,
         transform arguments                                    tests/test_faults_data.py
  11     Ctrl-C                                                 here (a child process)
and what already held: SIGKILL-resume (tests/test_resume_kill.py), a kill during an asynchronous
save (here), the NaN guard keeping earlier checkpoints (tests/test_train.py), a malicious pickle
(tests/test_convert_mae_official.py), bad config values (tests/test_config.py)."""
import json
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests import subprocess_run
from tests.disk import snapshot
from tests.tiny_config import epochs_config, get_config
from vit_jax import checkpoint, metrics, objectives, train, workdir
from vit_jax.errors import ConfigError, CorruptCheckpointError, NonFiniteError, WorkdirError
from vit_jax.objectives.supervised import Supervised


@pytest.fixture
def copy(finished_run, tmp_path):
    """A private copy of the finished tiny run."""
    path = str(tmp_path / "w")
    shutil.copytree(finished_run[0], path)
    return path


def fails_unchanged(path, cfg, error, match):
    """train.run(cfg, path) raises `error` matching `match` and leaves every file as it was."""
    before = snapshot(path)
    with pytest.raises(error, match=match) as info:
        train.run(cfg, path)
    assert snapshot(path) == before
    return str(info.value)


# -- 1, 12: a resume with another model, method or batch size is refused, config.json kept --------

def test_resume_with_another_model_is_refused_and_config_json_kept(copy):
    cfg = epochs_config()
    cfg.model.width = 32
    msg = fails_unchanged(copy, cfg, WorkdirError, "another model or method")
    assert "model.width: 16 -> 32" in msg and "Nothing was changed" in msg
    assert "delete" not in msg  # never advise throwing good checkpoints away


def test_resume_with_another_objective_is_refused(copy):
    cfg = epochs_config()
    cfg.objective = "mae"
    cfg.mae = objectives.default_config("mae")
    cfg.mae.update(decoder_width=16, decoder_depth=1, decoder_heads=2)
    msg = fails_unchanged(copy, cfg, WorkdirError, "another model or method")
    assert "objective: 'supervised' -> 'mae'" in msg


def test_resume_with_another_batch_size_is_refused(copy):
    cfg = epochs_config()
    cfg.batch_size = 32
    msg = fails_unchanged(copy, cfg, WorkdirError, "batch_size=16")
    assert "--config.batch_size=16" in msg and f"--config.init_from={copy}" in msg


def test_batch_size_recorded_in_the_checkpoint_is_checked_too(copy):
    # config.json says 32 (edited by hand), the checkpoints were trained with 16
    values = json.load(open(os.path.join(copy, "config.json")))
    values["batch_size"] = 32
    json.dump(values, open(os.path.join(copy, "config.json"), "w"))
    cfg = epochs_config()
    cfg.batch_size = 32
    fails_unchanged(copy, cfg, WorkdirError, "was trained with batch_size=16")


# -- 3: init_from on a workdir with checkpoints ----------------------------------------------------

def test_init_from_on_a_workdir_with_checkpoints_is_refused(copy, finished_run):
    cfg = epochs_config()
    cfg.init_from = finished_run[0]
    msg = fails_unchanged(copy, cfg, WorkdirError, "init_from=.* would be ignored")
    assert "started without init_from" in msg and "new --workdir" in msg


# -- 2: damaged checkpoints are detected and skipped -----------------------------------------------

def _damage(copy, step):
    """4 KB of garbage in the middle of each array data file of checkpoint `step`."""
    state = os.path.join(copy, "checkpoints", str(step), "state")
    data_files = [os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs
                  if os.path.basename(r) == "d" and os.path.getsize(os.path.join(r, f)) > 8192]
    assert data_files
    for target in data_files:
        with open(target, "r+b") as f:
            f.seek(os.path.getsize(target) // 2 - 2048)
            f.write(np.random.default_rng(step).bytes(4096))


def test_partly_overwritten_checkpoint_falls_back_and_is_kept_aside(copy, capsys):
    _damage(copy, 12)
    damaged = snapshot(os.path.join(copy, "checkpoints", "12"))
    cfg = epochs_config()
    cfg.total_steps, cfg.num_epochs = 0, None  # evaluate the restored state only
    train.run(cfg, copy)
    out = capsys.readouterr().out
    assert "note: checkpoint 12 is damaged" in out and "resumed from" in out and "checkpoints/8" in out
    # the damaged files are kept, byte for byte, beside the checkpoints
    assert snapshot(os.path.join(copy, "checkpoints.corrupt", "12")) == damaged
    assert sorted(checkpoint.Checkpointer(copy, read_only=True).all_steps()) == [4, 8]


def test_digests_catch_a_changed_array(copy):
    ck = checkpoint.Checkpointer(copy, read_only=True)
    saved = ck.saved_digests(12)
    assert len(saved) > 10 and all(isinstance(v, int) for v in saved.values())
    digests_file = os.path.join(copy, "checkpoints", "12", "digests", "metadata")
    changed = dict(saved, **{"params/head/bias": saved["params/head/bias"] ^ 1})
    with open(digests_file, "w") as f:  # as if that array's bytes had changed on disk
        json.dump(changed, f)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            checkpoint.load_params(copy, 4, path=()))
    with pytest.raises(CorruptCheckpointError, match=r"12 fails its digests in 1 array\(s\) \(params/head/bias\)"):
        ck.restore(12, abstract)
    with pytest.raises(CorruptCheckpointError, match="fails its digests"):
        checkpoint.load_params(copy, 12)
    state, _ = ck.restore(8, abstract)  # the others are untouched
    assert int(state["step"]) == 8


def test_digest_changes_with_any_one_element_and_not_with_the_sharding():
    rs = np.random.default_rng(0)
    x = rs.standard_normal((6, 8)).astype(np.float32)
    base = checkpoint.digests({"x": x})["x"]
    for i in rs.choice(48, 10, replace=False):  # one bit flipped anywhere changes the digest
        y = x.copy().reshape(-1)
        y.view(np.uint32)[i] ^= np.uint32(1 << int(rs.integers(32)))
        assert checkpoint.digests({"x": y.reshape(6, 8)})["x"] != base
    # closed form: sum of bits * odd weights mod 2**32
    bits = x.view(np.uint32).reshape(-1).astype(np.uint64)
    w = ((np.arange(48, dtype=np.uint64) * 2654435761 + 0x9E3779B9) % 2**32) | 1
    assert base == int((bits * w).sum() % 2**32)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b")))
    assert checkpoint.digests({"x": sharded})["x"] == base
    assert checkpoint.digests({"k": jnp.asarray([1, 2], jnp.uint32), "b": jnp.bfloat16(1.5),
                               "t": jnp.asarray([True])}).keys() == {"k", "b", "t"}


def test_unreadable_newest_checkpoint_falls_back(copy, capsys):
    for root, _, files in os.walk(os.path.join(copy, "checkpoints", "12", "state")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"not a checkpoint")
    cfg = epochs_config()
    cfg.total_steps, cfg.num_epochs = 0, None
    train.run(cfg, copy)
    out = capsys.readouterr().out
    assert "note: checkpoint 12 is damaged" in out and "checkpoints/8" in out


def test_no_restorable_checkpoint_is_an_error_that_changes_nothing(copy):
    for step in (4, 8, 12):
        _damage(copy, step)
    msg = fails_unchanged(copy, epochs_config(), CorruptCheckpointError, "no checkpoint in .* can be restored")
    assert "step 12:" in msg and "step 4:" in msg and "Nothing was changed" in msg


def test_a_save_killed_midway_is_ignored_and_cleaned_up(copy, capsys):
    # orbax writes a step into a temporary directory and renames it when complete
    partial = os.path.join(copy, "checkpoints", "16.orbax-checkpoint-tmp-1764587000000000")
    shutil.copytree(os.path.join(copy, "checkpoints", "12"), partial)
    os.remove(os.path.join(partial, "commit_success.txt"))
    cfg = epochs_config()
    cfg.total_steps, cfg.num_epochs = 0, None
    train.run(cfg, copy)
    assert "checkpoints/12" in capsys.readouterr().out
    assert not os.path.exists(partial)


# -- 4, 5: metrics.jsonl without checkpoints, torn and broken lines ---------------------------------

def test_deleted_checkpoints_start_fresh_and_move_old_metrics_aside(copy, capsys):
    old = open(os.path.join(copy, "metrics.jsonl")).read()
    shutil.rmtree(os.path.join(copy, "checkpoints"))
    cfg = epochs_config()
    cfg.total_steps, cfg.num_epochs = 0, None
    train.run(cfg, copy)
    assert "no checkpoint to resume from" in capsys.readouterr().out
    kept = [f for f in os.listdir(copy) if f.startswith("metrics.") and f != "metrics.jsonl"]
    assert len(kept) == 1 and open(os.path.join(copy, kept[0])).read() == old
    assert [r["step"] for r in metrics.read_jsonl(os.path.join(copy, "metrics.jsonl"))] == [0]


def test_torn_last_metrics_line_is_dropped_and_the_run_resumes(copy, capsys):
    path = os.path.join(copy, "metrics.jsonl")
    rows = metrics.read_jsonl(path)
    with open(path, "a") as f:
        f.write('{"step": 13, "train/lo')  # a kill in the middle of a write
    assert metrics.read_rows(path) == (rows, True)
    cfg = epochs_config()
    cfg.total_steps, cfg.num_epochs = 14, None
    train.run(cfg, copy)
    assert "last line of" in capsys.readouterr().out
    steps = [r["step"] for r in metrics.read_jsonl(path) if "train/loss" in r]
    assert steps == [2, 4, 6, 8, 10, 12, 14] and metrics.read_rows(path)[1] is False


def test_a_broken_metrics_line_in_the_middle_is_named(copy):
    path = os.path.join(copy, "metrics.jsonl")
    lines = open(path).read().splitlines(True)
    lines[1] = "garbage\n"
    open(path, "w").writelines(lines)
    fails_unchanged(copy, epochs_config(), WorkdirError, r"metrics.jsonl:2 is not a metrics row")


# -- 6, 8: degenerate or impossible setups fail before anything is created ------------------------

def _fails_creating_nothing(cfg, path, error, match):
    with pytest.raises(error, match=match):
        train.run(cfg, path)
    assert not os.path.exists(path)


def test_mae_that_masks_nothing_is_refused(tmp_path):
    cfg = get_config()
    cfg.objective = "mae"
    cfg.mae = objectives.default_config("mae")
    cfg.mae.update(decoder_width=16, decoder_depth=1, decoder_heads=2, mask_ratio=0.0)
    _fails_creating_nothing(cfg, str(tmp_path / "w"), ConfigError, "masks none of the 16 patches")


def test_a_single_class_folder_is_refused(tmp_path):
    for i in range(4):
        os.makedirs(tmp_path / "data" / "only", exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "data" / "only" / f"{i}.png")
    cfg = get_config()
    cfg.data.name = f"folder:{tmp_path / 'data'}"
    cfg.data.train_split, cfg.data.eval_split = "all", ""
    cfg.evals = {}
    _fails_creating_nothing(cfg, str(tmp_path / "w"), ConfigError, "at least 2 classes; this dataset has 1")


def test_seed_out_of_range_is_a_config_error(tmp_path):
    cfg = get_config()
    cfg.seed = -1
    _fails_creating_nothing(cfg, str(tmp_path / "w"), ConfigError, r"seed=-1 must be an integer in \[0, 2\*\*32\)")


def test_init_from_that_does_not_fit_fails_before_compiling(finished_run, tmp_path, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("jax.jit was called before the init_from check")
    monkeypatch.setattr(jax, "jit", no_compile)
    cfg = get_config()
    cfg.model.width = 32
    cfg.init_from = finished_run[0]
    _fails_creating_nothing(cfg, str(tmp_path / "w"), ConfigError, r"does not fit this model: .*source \(16,\)")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = get_config()
    cfg.init_from = str(empty)
    _fails_creating_nothing(cfg, str(tmp_path / "w"), ConfigError, "init_from=.*empty")


def test_a_workdir_that_is_a_file_or_not_writable(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WorkdirError, match="is a file, not a directory"):
        train.run(get_config(), str(f))
    assert f.read_text() == "x"
    with pytest.raises(WorkdirError, match="is a file; choose another path"):
        train.run(get_config(), str(f / "below"))
    # (tests run as root, for whom every directory is writable: simulate a read-only one)
    monkeypatch.setattr(workdir.os, "access", lambda p, mode: False)
    _fails_creating_nothing(get_config(), str(tmp_path / "w"), WorkdirError, "is not writable")


# -- 9: the NaN guard before the first checkpoint ---------------------------------------------------

class NanFromTheStart(Supervised):
    def loss(self, params, extra, batch, rng, step):
        loss, aux = super().loss(params, extra, batch, rng, step)
        return loss * jnp.nan, aux


def test_nan_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.REGISTRY, "nan_from_the_start", "tests.test_faults_workdir:NanFromTheStart")
    cfg = get_config()
    cfg.objective = "nan_from_the_start"
    with pytest.raises(NonFiniteError, match="at step 1 .*no checkpoint had been saved yet") as info:
        train.run(cfg, str(tmp_path / "w"))
    assert "None" not in str(info.value)


# -- 11 and the command line: one line, the exit code, no traceback ---------------------------------

def test_cli_workdir_error_is_one_line(copy):
    before = snapshot(copy)
    cfg = os.path.join(subprocess_run.ROOT, "tests", "tiny_config.py")
    proc = subprocess_run.run_command(subprocess_run.command(copy, "--config.model.width=32",
                                                             "--config.num_epochs=0.1375",
                                                             "--config.total_steps=-1", config=cfg), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "model.width: 16 -> 32" in lines[-1]
    assert snapshot(copy) == before


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    path = str(tmp_path / "w")
    # as from a terminal: SIGINT at its default (pytest-xdist workers ignore it, and the run
    # respects an inherited SIG_IGN, as `cmd &` in a script expects). The child inherits the
    # default from here for the moment of its start: a preexec_fn would run Python in the forked
    # child of this multithreaded (JAX) process, where a lock held at the fork can deadlock it
    ignored = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        proc = subprocess_run.popen(subprocess_run.command(path, "--config.total_steps=100000",
                                                           "--config.log_every=1", "--config.eval_every=0",
                                                           "--config.checkpoint_every=0"))
    finally:
        signal.signal(signal.SIGINT, ignored)
    try:
        rows = os.path.join(path, "metrics.jsonl")
        deadline = time.time() + 240
        while not (os.path.exists(rows) and metrics.read_jsonl(rows)) and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = subprocess_run.communicate(proc, 120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("interrupted: SIGINT at step ") and "run the same command to resume" in last
    step = int(last.split("at step ")[1].split()[0])
    assert checkpoint.Checkpointer(path, read_only=True).all_steps() == [step]
