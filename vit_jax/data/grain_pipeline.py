"""The training pipeline on grain: worker processes make the batches, the stream stays exact.

The same stream as vit_jax/data/pipeline.py's TrainPipeline, batch for batch, made by the same
function, `pipeline.TrainBatch`: row r of global batch n is stream position g = n*B + r, read
from `pipeline.source_index(g)` (a batch's rows in one read where the source batches reads) and
transformed with the rng of (seed, g). Here grain spreads the work:

    MapDataset.range(steps) -> map(TrainBatch: read the step's rows, transform, stack)
      -> to_iter_dataset(data.read_threads threads) -> mp_prefetch(data.workers processes)

Every batch is a pure function of (seed, step), so the output does not depend on how many
workers or processes make it, and the whole state is the next step, as before: `set_state`
rebuilds the grain iterator there. Worker processes receive the source and the transform by
pickle (transforms.SpecTransform, validate.MethodStep); `data.workers=0` makes the batches in
this process (read threads only). One map call per batch, not per row: a batch's records are
read together (tfds array_record's `__getitems__`), and grain's per-element bookkeeping is paid
once per batch.

A worker process that dies (killed, out of memory, crashed) stops the stream within seconds with
worker_watch.WorkerDied, a RuntimeError naming the process, its exit code or signal and
data.workers, also where grain alone would wait forever (a worker killed while still starting, or
halfway through sending a batch: vit_jax/data/worker_watch.py). A worker that crashes in C prints
its Python stack first (faulthandler); a Python error in a worker reaches the run with its
traceback, through grain.
"""
from __future__ import annotations

import faulthandler
import functools
import os
import threading
import time
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from vit_jax.data import pipeline, worker_watch

_STEPS = 2**62    # an endless stream: grain's range is lazy


def _init_worker(parent: int, worker_index: int, worker_count: int) -> None:
    """grain's worker_init_fn: a worker that crashes (a signal such as SIGSEGV) prints its Python
    stack for the run's log; one whose parent run dies (e.g. SIGKILL) exits within a second
    instead of living on as an orphan holding memory and a core."""
    del worker_index, worker_count
    faulthandler.enable()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _iterate(ds: Any, read_threads: int, workers: int, prefetch: int) -> Iterator:
    """A batched MapDataset through read threads and, with workers > 0, worker processes."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(read_threads, 1),
                                              prefetch_buffer_size=max(prefetch, 1)))
    if workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=max(prefetch, 1)),
                            worker_init_fn=functools.partial(_init_worker, os.getpid()))
        if worker_watch.SUPPORTED:   # a dead worker: an error, not a wait without end
            return worker_watch.WatchedIterator(functools.partial(iter, it), workers)
    return iter(it)


def eval_batches(source: Sequence[dict], transform: pipeline.Transform, global_batch: int,
                 process_index: int = 0, process_count: int = 1, workers: int = 2,
                 read_threads: int = 1, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """pipeline.eval_batches on grain: the same padded, masked batches in the same order, made by
    `workers` worker processes (the training loader's, data.loader="grain")."""
    num_batches, local = pipeline.eval_layout(len(source), global_batch, process_count)
    _parse_flags()
    batch = pipeline.EvalBatch(source, transform, global_batch, local, process_index * local)
    it = _iterate(grain.MapDataset.range(0, num_batches).map(batch), read_threads, workers, prefetch)
    try:
        yield from it
    finally:
        if hasattr(it, "close"):
            it.close()


def _parse_flags() -> None:
    if not flags.FLAGS.is_parsed():   # grain reads absl flags; a library caller may not have parsed them
        flags.FLAGS.mark_as_parsed()


class GrainTrainPipeline:
    """TrainPipeline's interface (iterate, state / set_state, epoch, batch_at, close) on grain."""

    def __init__(self, source: Sequence[dict], transform: pipeline.Transform, global_batch: int,
                 seed: int, process_index: int = 0, process_count: int = 1, workers: int = 2,
                 read_threads: int = 1, prefetch: int = 2, start_step: int = 0,
                 drop_remainder: bool = False):
        self.batch_at = pipeline.TrainBatch.of_process(source, transform, global_batch, seed, process_index,
                                                       process_count, drop_remainder)
        _parse_flags()
        self.workers, self.read_threads, self.prefetch = max(workers, 0), max(read_threads, 1), max(prefetch, 1)
        self._it: Iterator | None = None
        self.set_state({"step": start_step})

    def _iterator(self, step: int) -> Iterator:
        ds = grain.MapDataset.range(step, _STEPS).map(self.batch_at)
        return _iterate(ds, self.read_threads, self.workers, self.prefetch)

    # -- state: the step of the next batch returned ---------------------------------
    def state(self) -> dict[str, int]:
        return {"step": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._close_iterator()
        self._next = int(state["step"])

    def epoch(self, step: int | None = None) -> float:
        return self.batch_at.epoch(self._next if step is None else step)

    # -- production: batch_at(step), this process' rows of global batch `step`, synchronously here
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:   # started lazily: a pipeline that is only restored spawns nothing
            self._it = self._iterator(self._next)
        batch = next(self._it)
        self._next += 1
        return batch

    def _close_iterator(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None

    def close(self) -> None:
        self._close_iterator()
