"""A grain worker process that dies stops the stream with WorkerDied, never a hang, also when it
dies while still starting; workers that exit normally never raise it."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests import subprocess_run
from vit_jax.data import grain_pipeline, worker_watch

pytestmark = pytest.mark.skipif(not worker_watch.SUPPORTED, reason="needs Linux /proc")


def _to_float(row: dict, rng: np.random.Generator) -> dict:
    del rng
    return {"image": row["image"].astype(np.float32), "label": np.int32(row["label"])}


def _big_source() -> list[dict]:
    # ~5 MB pickled into each worker: far over a pipe's 64 KiB, so a worker killed before reading
    # it is the case grain alone waits on forever
    return [{"image": np.full((64, 64, 3), i % 251, np.uint8), "label": i % 10} for i in range(400)]


def _wait_zombie(pid: int, timeout: float = 30.0) -> int:
    t = time.time()
    while (code := worker_watch.exit_status(pid)) is None:
        assert time.time() - t < timeout, f"child {pid} did not exit"
        time.sleep(0.02)
    return code


@pytest.mark.timeout(120)   # a hang fails in 2 minutes, not the suite's 10
def test_a_worker_killed_while_starting_stops_the_stream_with_an_error_not_a_hang():
    before = subprocess_run.spawned_workers(os.getpid())
    g = grain_pipeline.GrainTrainPipeline(_big_source(), _to_float, 16, seed=0, workers=2)
    killed: list[int] = []

    def kill_first_worker():   # as soon as it exists: before it has read its pickled dataset
        t = time.time()
        while not killed and time.time() - t < 60:
            new = sorted(subprocess_run.spawned_workers(os.getpid()) - before)
            if new:
                os.kill(new[0], signal.SIGKILL)
                killed.append(new[0])
    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    t = time.time()
    with pytest.raises(worker_watch.WorkerDied) as e:
        for _ in range(200):   # the other worker's batches may come first
            next(g)
    assert time.time() - t < 30
    killer.join(5)
    assert killed
    msg = str(e.value)
    assert f"data worker process {killed[0]} terminated unexpectedly with exit code -9" in msg
    assert "killed by SIGKILL" in msg and "data.workers=2" in msg and "data.loader=threads" in msg
    with pytest.raises(worker_watch.WorkerDied):   # and again: no stream with a worker's batches missing
        next(g)
    t = time.time()
    g.close()    # returns, even where grain's own close would wait on the stuck start for ever
    assert time.time() - t < worker_watch.GRACE_S + 10


@pytest.mark.timeout(120)
def test_closing_after_a_worker_died_unnoticed_returns():
    before = subprocess_run.spawned_workers(os.getpid())
    g = grain_pipeline.GrainTrainPipeline(_big_source(), _to_float, 16, seed=0, workers=2)
    next(g)
    t = time.time()
    while len(workers := sorted(subprocess_run.spawned_workers(os.getpid()) - before)) < 2:
        assert time.time() - t < 60, "the second worker never started"
        time.sleep(0.01)
    os.kill(workers[1], signal.SIGKILL)
    time.sleep(0.5)
    t = time.time()
    g.close()
    assert time.time() - t < worker_watch.GRACE_S + 30   # grain joins each worker for up to 25 s


def test_workers_that_exit_normally_raise_nothing():
    """The grain eval loader runs to its end and its workers stop: no WorkerDied, the same batches
    as without workers (their exit code 0 is no failure)."""
    src = _big_source()[:40]
    with_workers = list(grain_pipeline.eval_batches(src, lambda r: _to_float(r, None), 16, workers=2))
    alone = list(grain_pipeline.eval_batches(src, lambda r: _to_float(r, None), 16, workers=0))
    assert len(with_workers) == len(alone) == 3
    for a, b in zip(with_workers, alone):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_the_watch_reports_only_workers_that_died_abnormally():
    """A spawn child seen running, or one a thread named grain* started: reported when killed, not
    when it exits with 0; another child (started by this thread, never seen running) is not ours."""
    ctx = multiprocessing.get_context("spawn")
    watch = worker_watch.WorkerWatch()
    done = ctx.Process(target=time.sleep, args=(0,))
    done.start()
    assert _wait_zombie(done.pid) == 0
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert _wait_zombie(other.pid) == 3
    seen = ctx.Process(target=time.sleep, args=(60,))
    seen.start()
    while seen.pid not in subprocess_run.spawned_workers(os.getpid()):   # its command line is the spawn's once it has exec'd
        time.sleep(0.01)
    assert watch.dead() is None   # it runs; `done` exited with 0; `other` is not a worker
    os.kill(seen.pid, signal.SIGKILL)
    assert _wait_zombie(seen.pid) == -9
    assert watch.dead() == (seen.pid, -9)
    seen.join()   # the watch never reaps: multiprocessing still reads the exit code
    assert seen.exitcode == -9 and watch.dead() is None
    started, release, box = threading.Event(), threading.Event(), []

    def start_and_stay():   # as grain's prefetch thread does: it lives on after starting a worker
        box.append(ctx.Process(target=time.sleep, args=(60,)))
        box[0].start()
        started.set()
        release.wait(60)
    starter = threading.Thread(target=start_and_stay, name="grain-like-starter", daemon=True)
    starter.start()
    assert started.wait(60)
    os.kill(box[0].pid, signal.SIGKILL)   # never seen running: a zombie keeps no command line
    assert _wait_zombie(box[0].pid) == -9
    assert watch.dead() == (box[0].pid, -9)   # known by the grain thread that started it
    release.set()
    starter.join()
    box[0].join()
    assert worker_watch.describe(-9).startswith("killed by SIGKILL")
    assert worker_watch.describe(2) == "exit status 2"
    done.join()
    other.wait()
