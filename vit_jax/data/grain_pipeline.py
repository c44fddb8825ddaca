"""The training pipeline on grain: worker processes make the batches, the stream stays exact.

The same stream as vit_jax/data/pipeline.py's TrainPipeline, batch for batch: row r of global
batch n is stream position g = n*B + r, read from `pipeline.source_index(g)` and transformed
with the rng of (seed, g). Here grain spreads the work:

    MapDataset.range(local positions) -> map(example of position) -> batch(local rows, stack)
      -> to_iter_dataset(data.read_threads threads) -> mp_prefetch(data.workers processes)

Every batch is a pure function of (seed, step), so the output does not depend on how many
workers or processes make it, and the whole state is the next step, as before: `set_state`
rebuilds the grain iterator there. Worker processes receive the source and the transform by
pickle (transforms.SpecTransform, validate.MethodStep); `data.workers=0` makes the batches in
this process (read threads only).
"""
from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from vit_jax.data import pipeline
from vit_jax.durations import steps_per_epoch

_POSITIONS = 2**62    # an endless stream: grain's range is lazy


def _exit_with_parent(parent: int, worker_index: int, worker_count: int) -> None:
    """grain's worker_init_fn: a worker whose parent run dies (e.g. SIGKILL) exits within a second
    instead of living on as an orphan holding memory and a core."""
    del worker_index, worker_count

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _position(k: int, global_batch: int, local_batch: int, offset: int) -> int:
    """Local position k -> the global stream position of this process' row k % b of batch k // b."""
    step, row = divmod(int(k), local_batch)
    return step * global_batch + offset + row


class _Example:
    """Local stream position k -> this process' row k % b of global batch k // b (picklable)."""

    def __init__(self, source: Sequence[dict], transform: pipeline.Transform, seed: int,
                 global_batch: int, local_batch: int, offset: int, drop_remainder: bool):
        self.source, self.transform, self.seed = source, transform, seed
        self.global_batch, self.local_batch, self.offset = global_batch, local_batch, offset
        self.drop_remainder = drop_remainder

    def position(self, k: int) -> int:
        return _position(k, self.global_batch, self.local_batch, self.offset)

    def index(self, g: int) -> int:
        return pipeline.source_index(g, len(self.source), self.seed, self.global_batch,
                                     self.drop_remainder)

    def origin(self, k: int) -> str:
        return pipeline.origin(self.source, self.index(self.position(k)))

    def __call__(self, k: int) -> tuple[int, dict]:
        g = self.position(k)
        return int(k), pipeline.make_example(self.source, self.transform, self.seed, self.index(g), g)


class _Stack:
    """(position, example) rows -> one batch; rows whose shapes disagree are named by their files,
    as the thread loader names them (picklable)."""

    def __init__(self, example: _Example | _EvalExample):
        self.example = example

    def __call__(self, rows: Sequence[tuple[int, dict]]) -> dict[str, np.ndarray]:
        positions = [k for k, _ in rows]
        return pipeline.stack([ex for _, ex in rows], lambda r: self.example.origin(positions[r]))


class _EvalExample:
    """Local position k -> (k, this process' row k % b of eval batch k // b) (picklable)."""

    def __init__(self, source: Sequence[dict], transform: pipeline.Transform, global_batch: int,
                 local_batch: int, offset: int):
        self.source, self.transform = source, transform
        self.global_batch, self.local_batch, self.offset = global_batch, local_batch, offset

    def position(self, k: int) -> int:
        return _position(k, self.global_batch, self.local_batch, self.offset)

    def origin(self, k: int) -> str:
        return pipeline.origin(self.source, min(self.position(k), len(self.source) - 1))

    def __call__(self, k: int) -> tuple[int, dict]:
        return int(k), pipeline.eval_example(self.source, self.transform, self.position(k))


def _iterate(ds: Any, read_threads: int, workers: int, prefetch: int) -> Iterator:
    """A batched MapDataset through read threads and, with workers > 0, worker processes."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(read_threads, 1),
                                              prefetch_buffer_size=max(prefetch, 1)))
    if workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=max(prefetch, 1)),
                            worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
    return iter(it)


def eval_batches(source: Sequence[dict], transform: pipeline.Transform, global_batch: int,
                 process_index: int = 0, process_count: int = 1, workers: int = 2,
                 read_threads: int = 1, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """pipeline.eval_batches on grain: the same padded, masked batches in the same order, made by
    `workers` worker processes (the training loader's, data.loader="grain")."""
    num_batches, local = pipeline.eval_layout(len(source), global_batch, process_count)
    _parse_flags()
    example = _EvalExample(source, transform, global_batch, local, process_index * local)
    ds = grain.MapDataset.range(0, num_batches * local).map(example).batch(
        local, drop_remainder=True, batch_fn=_Stack(example))
    it = _iterate(ds, read_threads, workers, prefetch)
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
        pipeline.check_stream(len(source), global_batch, process_count, drop_remainder)
        _parse_flags()
        self.source, self.global_batch, self.seed = source, global_batch, seed
        self.local_batch = global_batch // process_count
        self.steps_per_epoch = steps_per_epoch(len(source), global_batch, drop_remainder)
        self.workers, self.read_threads, self.prefetch = max(workers, 0), max(read_threads, 1), max(prefetch, 1)
        self._example = _Example(source, transform, seed, global_batch, self.local_batch,
                                 process_index * self.local_batch, drop_remainder)
        self._it: Iterator | None = None
        self.set_state({"step": start_step})

    def _iterator(self, step: int) -> Iterator:
        b = self.local_batch
        ds = (grain.MapDataset.range(step * b, _POSITIONS).map(self._example)
              .batch(b, drop_remainder=True, batch_fn=_Stack(self._example)))
        return _iterate(ds, self.read_threads, self.workers, self.prefetch)

    # -- state: the step of the next batch returned ---------------------------------
    def state(self) -> dict[str, int]:
        return {"step": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._close_iterator()
        self._next = int(state["step"])

    def epoch(self, step: int | None = None) -> float:
        step = self._next if step is None else step
        return step / self.steps_per_epoch

    # -- production ------------------------------------------------------------------
    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process' rows of global batch `step`, computed synchronously here."""
        first = step * self.local_batch
        return _Stack(self._example)([self._example(k) for k in range(first, first + self.local_batch)])

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
