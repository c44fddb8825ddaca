"""The training loop end to end on a tiny config: files, resume, accumulation, NaN guard."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_config import get_config
from vit_jax import checkpoint, metrics, objectives, optim, train, validate
from vit_jax import state as state_lib
from vit_jax.objectives.supervised import Supervised


def snapshot(workdir):
    """Every file under workdir with its bytes (for 'nothing was touched' checks)."""
    out = {}
    for root, _, files in os.walk(workdir):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, workdir)] = fh.read()
    return out


def test_run_writes_config_metrics_and_checkpoints(finished_run):
    workdir, summary = finished_run
    cfg = json.load(open(os.path.join(workdir, "config.json")))
    assert cfg["model_name"] == "vit_tiny_patch2_8" and cfg["num_epochs"] == 0.1375
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [2, 4, 6, 8, 10, 12]
    evals = [r for r in rows if "eval/test/accuracy" in r]
    assert [r["step"] for r in evals] == [6, 12]
    for r in evals:
        assert 0.0 <= r["eval/test/accuracy"] <= 1.0 and r["eval/test/loss"] > 0
    # the lr follows warmup + cosine over the 12 steps derived from num_epochs
    want = optim.warmup_cosine(3e-3, 12, 2)
    for r in rows:
        if "train/loss" in r:
            assert np.isfinite(r["train/loss"])
            assert r["train/lr"] == pytest.approx(float(want(r["step"] - 1)), rel=1e-5)
    assert sorted(checkpoint.Checkpointer(workdir).all_steps())[-3:] == [4, 8, 12]
    assert summary["step"] == 12 and summary["eval/test/accuracy"] == evals[-1]["eval/test/accuracy"]


def test_loss_at_init_is_log_num_classes():
    # the head starts at zero, so every class gets probability 1/10
    plan, _, _, state = _plan_and_state(get_config())
    rs = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rs.standard_normal((4, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray([0, 3, 5, 9], jnp.int32)}
    loss, _ = plan.objective.loss(state["params"], state["extra"], batch, jax.random.PRNGKey(0), 0)
    assert float(loss) == pytest.approx(np.log(10), abs=1e-6)


def test_run_on_finished_workdir_resumes_and_extends(finished_run, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished_run[0], workdir)
    cfg = get_config()
    cfg.total_steps = 16
    train.run(cfg, workdir)
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6, 8, 10, 12, 14, 16]
    # the changed config is kept beside the new one
    assert any(f.startswith("config.") and f != "config.json" for f in os.listdir(workdir))
    # each start records what it ran on, the image decoder included
    starts = [json.loads(line) for line in open(os.path.join(workdir, "environment.jsonl"))]
    assert len(starts) == 2 and starts[0]["packages"]["jax"] == jax.__version__
    assert starts[1]["image_decoder"]["pil"] and starts[1]["data_loader"]["loader"] == "threads"


def test_resume_notes_a_changed_image_decoder(finished_run, tmp_path, capsys):
    """A resume in an environment whose PIL / libjpeg differ from the last start's says so (the
    pixels of JPEG files may change); the same decoder says nothing."""
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished_run[0], workdir)
    env = os.path.join(workdir, "environment.jsonl")
    starts = [json.loads(line) for line in open(env)]
    starts[-1]["image_decoder"]["libjpeg_turbo"] = "0.0.1"
    with open(env, "w") as f:
        f.write("".join(json.dumps(s) + "\n" for s in starts) + '{"torn": \n')  # a torn last line is passed over
    cfg = get_config()
    cfg.total_steps = 14
    train.run(cfg, workdir)
    now = json.loads(open(env).read().splitlines()[-1])["image_decoder"]["libjpeg_turbo"]
    assert f"image decoder differs from the one this run started with (libjpeg_turbo 0.0.1 -> {now})" \
        in capsys.readouterr().out
    cfg.total_steps = 16
    train.run(cfg, workdir)
    assert "image decoder differs" not in capsys.readouterr().out


def _plan_and_state(cfg):
    plan = validate.validate(cfg)
    ex = {k: jnp.zeros((1,) + v.shape, v.dtype) for k, v in plan.example.items()}
    params = jax.eval_shape(plan.objective.init, jax.random.PRNGKey(0), ex)[0]
    tx, schedule = optim.make_optimizer(cfg, params, cfg.total_steps)
    state = state_lib.init_state(plan.objective, tx, jax.random.PRNGKey(0), ex)
    return plan, tx, schedule, state


def test_gradient_accumulation_equals_full_batch():
    cfg = get_config()
    plan, tx, schedule, state = _plan_and_state(cfg)
    rs = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rs.standard_normal((16, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rs.integers(0, 10, 16), jnp.int32)}
    outs = []
    for accum in (1, 4):
        step = jax.jit(train.make_train_step(plan.objective, tx, schedule, accum, 0.0))
        outs.append(step(state, batch))
    (s1, m1), (s4, m4) = outs
    np.testing.assert_allclose(m1["train/loss"], m4["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["train/grad_norm"], m4["train/grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_ema_tracks_params(tmp_path):
    cfg = get_config()
    cfg.ema_decay = 0.5
    cfg.total_steps = 4
    cfg.eval_every = 4
    cfg.tensorboard = True
    summary = train.run(cfg, str(tmp_path))
    assert "eval/test_ema/accuracy" in summary and "eval/test/accuracy" in summary
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


class NanAfterStep3(Supervised):
    """Supervised, but the loss turns NaN from step 5 on (a blown-up run)."""

    def loss(self, params, extra, batch, rng, step):
        loss, aux = super().loss(params, extra, batch, rng, step)
        return jnp.where(step >= 5, jnp.nan, loss), aux


def test_nan_guard_stops_and_keeps_earlier_checkpoints_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.REGISTRY, "nan_after_step3", "tests.test_train:NanAfterStep3")
    cfg = get_config()
    cfg.objective = "nan_after_step3"
    cfg.total_steps = 12
    cfg.checkpoint_every = 2
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 6"):
        train.run(cfg, str(tmp_path))
    ck = checkpoint.Checkpointer(str(tmp_path))
    assert ck.latest_step() == 4  # step 6 was never saved
    params = checkpoint.load_params(str(tmp_path))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4]
    assert all(np.isfinite(r["train/loss"]) for r in rows)


def test_failing_run_leaves_workdir_untouched(finished_run):
    workdir = finished_run[0]
    before = snapshot(workdir)
    cfg = get_config()
    cfg.batch_size = 7  # not divisible by the 8 devices
    with pytest.raises(validate.ConfigError):
        train.run(cfg, workdir)
    cfg = get_config()
    cfg.model.width = 15  # not divisible by num_heads
    with pytest.raises(validate.ConfigError):
        train.run(cfg, workdir)
    assert snapshot(workdir) == before


def test_bf16_compute_keeps_float32_params_and_close_loss():
    rs = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rs.standard_normal((16, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rs.integers(0, 10, 16), jnp.int32)}
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = get_config()
        cfg.dtype = dtype
        plan, tx, schedule, state = _plan_and_state(cfg)
        step = jax.jit(train.make_train_step(plan.objective, tx, schedule, 1, 0.0))
        for _ in range(4):  # lr is 0 at step 0 (warmup), so look a few steps in
            state, m = step(state, batch)
        results[dtype] = (state, float(m["train/loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(results["bfloat16"][0]["params"]))
    assert results["bfloat16"][1] == pytest.approx(results["float32"][1], abs=2e-2)
    assert results["bfloat16"][1] != results["float32"][1]  # bf16 really was used
