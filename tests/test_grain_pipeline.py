"""data.loader="grain": the same batches as the thread pipeline, whatever the workers or processes,
and the same run, bit for bit, through the loop and through a resume."""
import os
import shutil
import signal
import time

import numpy as np
import pytest

from tests import subprocess_run
from tests.tiny_config import epochs_config, get_config
from vit_jax import metrics, train, validate
from vit_jax.data import grain_pipeline, pipeline
from vit_jax.durations import steps_per_epoch


@pytest.fixture(scope="module")
def plan():
    cfg = get_config()
    return cfg, validate.validate(cfg)


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("drop", [False, True])
def test_grain_batches_equal_the_thread_pipeline_for_any_workers_and_processes(plan, drop):
    cfg, p = plan
    b = 16
    ref = pipeline.TrainPipeline(p.train_source, p.train_transform, b, cfg.seed, workers=1,
                                 drop_remainder=drop)
    steps = [0, 1, 2, 87, 88]   # 87 / 88: across the first epoch's end (1,397 examples)
    want = {s: ref.batch_at(s) for s in steps}
    ref.close()
    # in this process (workers=0) and with 1 and 2 worker processes, started at a later step
    for workers in (0, 1, 2):
        g = grain_pipeline.GrainTrainPipeline(p.train_source, p.train_transform, b, cfg.seed,
                                              workers=workers, drop_remainder=drop)
        _equal(next(g), want[0])
        g.set_state({"step": 87})
        assert g.state() == {"step": 87}
        _equal(next(g), want[87])
        _equal(next(g), want[88])
        assert g.state() == {"step": 89} and g.epoch(89) == pytest.approx(
            89 / steps_per_epoch(len(p.train_source), b, drop))
        g.close()
    # two processes, each its half of the global batch (made by a worker process of its own)
    halves = [grain_pipeline.GrainTrainPipeline(p.train_source, p.train_transform, b, cfg.seed, i, 2,
                                                workers=1, start_step=2, drop_remainder=drop)
              for i in range(2)]
    rows = [next(h) for h in halves]
    _equal({k: np.concatenate([r[k] for r in rows]) for k in rows[0]}, want[2])
    _equal(halves[1].batch_at(87), {k: v[8:] for k, v in want[87].items()})
    for h in halves:
        h.close()


def test_grain_eval_batches_equal_the_thread_eval_batches(plan):
    """Evaluation through grain workers: the same padded, masked batches in the same order as
    the thread loader's, in this process, with 2 workers, and split over 2 processes."""
    cfg, p = plan
    source = [p.eval_source[i] for i in range(37)]   # 37 = 2 batches of 16 + 5 rows and 11 of padding
    want = list(pipeline.eval_batches(source, p.eval_transform, 16, workers=1))
    assert len(want) == 3 and want[-1]["mask"].sum() == 5
    for workers in (0, 2):
        got = list(grain_pipeline.eval_batches(source, p.eval_transform, 16, workers=workers))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            _equal(a, b)
    halves = [list(grain_pipeline.eval_batches(source, p.eval_transform, 16, i, 2, workers=0)) for i in range(2)]
    for n, b in enumerate(want):
        _equal({k: np.concatenate([halves[0][n][k], halves[1][n][k]]) for k in b}, b)


def _losses(workdir):
    return [(r["step"], r.get("train/loss"), r.get("eval/test/accuracy"))
            for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if "train/loss" in r or "eval/test/accuracy" in r]


def test_grain_run_and_its_resume_equal_the_thread_run(finished_run, tmp_path):
    """The shared tiny run (thread loader) trained again on grain's worker processes, then resumed
    from its step-4 checkpoint on grain: the same losses and accuracies, bit for bit."""
    cfg = epochs_config()
    cfg.data.loader, cfg.data.workers = "grain", 2
    train.run(cfg, str(tmp_path / "grain"))
    assert _losses(str(tmp_path / "grain")) == _losses(finished_run[0])
    copy = str(tmp_path / "resumed")
    shutil.copytree(finished_run[0], copy)
    for step in ("8", "12"):
        shutil.rmtree(os.path.join(copy, "checkpoints", step))
    train.run(cfg, copy)
    assert _losses(copy) == _losses(finished_run[0])


@pytest.mark.timeout(180)   # a hang fails in 3 minutes, not the suite's 10
def test_a_worker_killed_stops_the_stream_with_an_error_not_a_hang(plan):
    """A worker killed while running: the next batches raise grain's error within seconds.

    The kill comes after each worker has delivered a batch (grain interleaves the workers in
    turn, so two batches); a worker killed while still starting is tests/test_worker_watch.py's."""
    cfg, p = plan
    before = subprocess_run.spawned_workers(os.getpid())
    g = grain_pipeline.GrainTrainPipeline(p.train_source, p.train_transform, 16, cfg.seed, workers=2)
    next(g), next(g)
    mine = sorted(subprocess_run.spawned_workers(os.getpid()) - before)
    assert len(mine) == 2
    os.kill(mine[0], signal.SIGKILL)
    t = time.time()
    with pytest.raises(RuntimeError, match="terminated unexpectedly with exit code -9"):
        for _ in range(500):
            next(g)
    assert time.time() - t < 30
    g.close()
