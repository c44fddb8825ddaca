"""The input pipeline: deterministic, sharded by process, resumable from one integer.

Example at global stream position g (step n, row r of the global batch: g = n*B + r)
is `source[perm_e[g % N]]` with `perm_e` a permutation seeded by (seed, epoch e = g // N)
(with drop_remainder: e = n // S, S = floor(N / B) steps per epoch, and the index
`perm_e[(n % S) * B + r]`, so each epoch's last N - S*B examples are skipped, as DINO's loader does),
transformed with a numpy Generator seeded by (seed, g). So a batch depends only on the
seed and its step: resuming needs nothing but the next step (`state()`), and P processes
each computing rows [p*b, (p+1)*b) of the global batch together produce exactly the
batch one process would. Transforms run on a thread pool (PIL and numpy release the
GIL) one batch per task, with `prefetch` batches in flight.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vit_jax.data.skipped_files import unreadable_of, with_new_unreadable
from vit_jax.durations import steps_per_epoch
from vit_jax.errors import DataError

Transform = Callable[[dict, np.random.Generator], dict]
SAME_SIZE_FIX = ("add resize((H, W)) or a fixed-size crop (rrc(S), center_crop(S), "
                 "resize_center_crop(S), pad_crop(S, P)) to {keys} so every image has the same "
                 "size")


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def source_index(g: int, n: int, seed: int, global_batch: int, drop_remainder: bool = False) -> int:
    """The source row of global stream position g (see the module docstring): perm_e[g % n] with
    e = g // n, or with drop_remainder each epoch's floor(n / B) whole batches."""
    if drop_remainder:
        step, row = divmod(g, global_batch)
        epoch, within = divmod(step, max(n // global_batch, 1))
        return int(_permutation(seed, epoch, n)[within * global_batch + row])
    return int(_permutation(seed, g // n, n)[g % n])


def check_stream(n: int, global_batch: int, process_count: int, drop_remainder: bool) -> None:
    """The stream's preconditions, shared by every training loader (ValueError naming the fix)."""
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
    if n == 0:
        raise ValueError("the training source is empty")
    if drop_remainder and global_batch > n:
        raise ValueError(f"data.drop_remainder with batch size {global_batch} > {n} training examples "
                         f"would drop every example: lower batch_size or set data.drop_remainder=False")


def origin(source: Any, idx: int) -> str:
    """Example idx's origin for messages: its file when the source has files (image folders)."""
    files = getattr(source, "files", None)
    return str(files[idx]) if files is not None else f"example {idx}"


def stack(examples: Sequence[dict], where: Callable[[int], str] = str) -> dict[str, np.ndarray]:
    """Examples -> one batch; ``where(row)`` names a row's origin when shapes disagree."""
    out = {}
    for k in examples[0]:
        arrays = [np.asarray(e[k]) for e in examples]
        try:
            out[k] = np.stack(arrays)
        except ValueError as e:
            odd = [r for r, a in enumerate(arrays) if a.shape != arrays[0].shape]
            if not odd:
                raise
            r = odd[0]
            what = "images" if k == "image" else f"values of {k!r}"
            fix = (SAME_SIZE_FIX.format(keys="data.train_transform / data.eval_transform")
                   if k == "image" else f"every example must give {k!r} the same shape")
            raise DataError(f"{what} of different shapes in one batch: {arrays[0].shape} "
                            f"({where(0)}) and {arrays[r].shape} ({where(r)}); {fix}") from e
    return out


def read_rows(source: Sequence[dict], indices: Sequence[int]) -> list[dict]:
    """Source rows `indices`, in one batched read where the source has one (`__getitems__`:
    tfds's array_record reader fetches a batch's records in parallel), else one by one."""
    getitems = getattr(source, "__getitems__", None)
    rows = getitems([int(i) for i in indices]) if getitems is not None else [source[i] for i in indices]
    return [dict(r) for r in rows]


class RowByRow:
    """`source` without its batched read: `read_rows` then reads it one row at a time (the
    comparison in tests/test_array_record.py and benchmarks/array_record_reads.py)."""

    def __init__(self, source: Sequence[dict]):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return self.source[i]


class TrainBatch:
    """Step -> this process' rows of global batch `step` (the module docstring's stream): its
    source rows read together, each transformed with the rng of its stream position. A pure
    function of (seed, step), picklable: both loaders call it, grain in its worker processes."""

    def __init__(self, source: Sequence[dict], transform: Transform, seed: int, global_batch: int,
                 local_batch: int, offset: int, drop_remainder: bool):
        self.source, self.transform, self.seed = source, transform, seed
        self.global_batch, self.local_batch, self.offset = global_batch, local_batch, offset
        self.drop_remainder = drop_remainder

    @classmethod
    def of_process(cls, source: Sequence[dict], transform: Transform, global_batch: int, seed: int,
                   process_index: int, process_count: int, drop_remainder: bool) -> TrainBatch:
        """Process `process_index`'s rows [p*b, (p+1)*b) of each global batch, the stream's
        preconditions checked (check_stream): what both loaders build."""
        check_stream(len(source), global_batch, process_count, drop_remainder)
        local = global_batch // process_count
        return cls(source, transform, seed, global_batch, local, process_index * local, drop_remainder)

    def index(self, g: int) -> int:
        return source_index(g, len(self.source), self.seed, self.global_batch, self.drop_remainder)

    def epoch(self, step: int) -> float:
        """Epochs done before `step` (drop_remainder: floor(N / B) steps an epoch)."""
        return step / steps_per_epoch(len(self.source), self.global_batch, self.drop_remainder)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = int(step) * self.global_batch + self.offset
        positions = range(first, first + self.local_batch)
        indices = [self.index(g) for g in positions]
        unreadable = unreadable_of(self.source)
        before = unreadable() if unreadable else frozenset()
        rows = read_rows(self.source, indices)
        batch = stack([self.transform(row, np.random.default_rng([self.seed, g])) for row, g in zip(rows, positions)],
                      lambda r: origin(self.source, indices[r]))
        # the files this batch found unreadable and skipped, for the run's count (skipped_files.py)
        return with_new_unreadable(batch, before, unreadable()) if unreadable else batch


class EvalBatch:
    """Step -> this process' rows of padded eval batch `step`: position g is source row g with
    "mask" 1.0, or past the end the last row again with "mask" 0.0 (picklable, as TrainBatch)."""

    def __init__(self, source: Sequence[dict], transform: Callable[[dict], dict], global_batch: int,
                 local_batch: int, offset: int):
        self.source, self.transform = source, transform
        self.global_batch, self.local_batch, self.offset = global_batch, local_batch, offset

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        n, first = len(self.source), int(step) * self.global_batch + self.offset
        positions = range(first, first + self.local_batch)
        indices = [min(g, n - 1) for g in positions]
        examples = []
        for row, g in zip(read_rows(self.source, indices), positions):
            ex = self.transform(row)
            ex["mask"] = np.float32(g < n)
            examples.append(ex)
        return stack(examples, lambda r: origin(self.source, indices[r]))


def mixed_sizes(source: Any, transform: Callable[[dict], dict], max_files: int = 256,
                max_sizes: int = 32) -> tuple[tuple[str, tuple, tuple], ...] | None:
    """Two files whose images, of different sizes, the (deterministic) ``transform`` turns into
    different shapes: ((where, (h, w), shape), (where, (h, w), shape)); else None.

    Before any compile, so a folder of mixed sizes without a resize fails with its file names, not
    in `stack` at some step. Only sources that read sizes cheaply (an ``image_sizes`` method:
    image folders) are checked; at most ``max_sizes`` distinct sizes are transformed, spread over
    the aspect ratios (where `resize(int)` differs) plus the smallest (where a crop may not fit).
    """
    sizes_of = getattr(source, "image_sizes", None)
    if sizes_of is None:
        return None
    first: dict[tuple[int, int], int] = {}
    for idx, hw in sizes_of(max_files).items():
        first.setdefault(hw, idx)
    if len(first) < 2:
        return None
    by_aspect = sorted(first, key=lambda hw: (hw[0] / hw[1], hw))
    picks = [by_aspect[int(k)] for k in
             np.unique(np.linspace(0, len(by_aspect) - 1, min(len(by_aspect), max_sizes)).round())]
    smallest = min(first, key=lambda hw: (hw[0] * hw[1], hw))
    picks += [smallest] if smallest not in picks else []
    seen = None
    for hw in picks:
        idx = first[hw]
        where, example = origin(source, idx), dict(source[idx])  # a DataError passes as it is
        try:
            shape = tuple(np.shape(transform(example)["image"]))
        except ValueError as e:
            raise ValueError(f"{where} ({hw[0]}x{hw[1]}): {e}") from e
        if seen is None:
            seen = (idx, (where, hw, shape))
        elif shape != seen[1][2]:
            return tuple(x for _, x in sorted([seen, (idx, (where, hw, shape))]))  # file order
    return None


class TrainPipeline:
    """Endless shuffled stream of this process' part of each global batch.

    Args:
        source: random-access sequence of example dicts (`len`, `__getitem__`).
        transform: `f(example, rng) -> example`, e.g. from `data.transforms.build`.
        global_batch: rows per step over all processes.
        seed: one integer fixes the order and every random transform.
        process_index, process_count: which rows this process produces.
        drop_remainder: floor(N / B) steps per epoch, each on its own permutation (DINO's loader).
    """

    def __init__(self, source: Sequence[dict], transform: Transform, global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1, workers: int = 4,
                 prefetch: int = 2, start_step: int = 0, drop_remainder: bool = False):
        self.batch_at = TrainBatch.of_process(source, transform, global_batch, seed, process_index,
                                              process_count, drop_remainder)
        self.prefetch = max(prefetch, 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(max(workers, 1))
        self._queue: collections.deque = collections.deque()
        self.set_state({"step": start_step})

    # -- state: the step of the next batch returned ---------------------------------
    def state(self) -> dict[str, int]:
        return {"step": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        for fut in self._queue:
            fut.cancel()
        self._queue.clear()
        self._next = int(state["step"])
        self._submitted = self._next

    def epoch(self, step: int | None = None) -> float:
        return self.batch_at.epoch(self._next if step is None else step)

    # -- production: batch_at(step), this process' rows of global batch `step`, synchronously
    def _submit(self) -> None:
        # One task per batch: per-example tasks cost more in scheduling than small images in work.
        while len(self._queue) < self.prefetch:
            self._queue.append(self._pool.submit(self.batch_at, self._submitted))
            self._submitted += 1

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        self._submit()
        fut = self._queue.popleft()
        self._next += 1
        self._submit()
        return fut.result()

    def close(self) -> None:
        self.set_state(self.state())
        self._pool.shutdown(wait=False, cancel_futures=True)


def eval_batches(source: Sequence[dict], transform: Callable[[dict], dict], global_batch: int,
                 process_index: int = 0, process_count: int = 1,
                 workers: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over `source`, padded to whole global batches, `workers` batches in flight.

    Each batch carries `"mask"` (1.0 for real rows, 0.0 for padding), so metrics
    averaged with it count every example exactly once.
    """
    num_batches, local = eval_layout(len(source), global_batch, process_count)
    batch = EvalBatch(source, transform, global_batch, local, process_index * local)
    workers = max(workers, 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        queue = collections.deque(pool.submit(batch, s) for s in range(min(workers, num_batches)))
        for step in range(num_batches):
            out = queue.popleft().result()
            if step + workers < num_batches:   # bounded: pool.map would make every batch at once
                queue.append(pool.submit(batch, step + workers))
            yield out


def eval_layout(n: int, global_batch: int, process_count: int) -> tuple[int, int]:
    """(number of global eval batches, rows per process) of one padded pass over n examples."""
    if global_batch % process_count:
        raise ValueError(f"eval batch size {global_batch} is not divisible by {process_count} processes")
    return -(-n // global_batch), global_batch // process_count
