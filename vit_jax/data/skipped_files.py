"""The unreadable files a run skipped (data.skip_bad_images=True), counted for its metrics.

A source that skips files (image folders) says which with ``unreadable()``, the indices of the files
it has met unreadable so far. With grain each worker process holds its own copy of the source, so
the count cannot be read in the training process: each batch carries the indices its making
found new (`with_new_unreadable`), and the training process keeps their union (`SkippedFiles`),
logged as data/skipped_images. A union, so a file met by several workers (or threads) counts once.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

KEY = "unreadable_files"   # a host-only batch entry, taken out before the batch goes to the devices


def unreadable_of(source: Any) -> Callable[[], frozenset[int]] | None:
    """The source's ``unreadable`` method, or None for sources that never skip a row."""
    return getattr(source, "unreadable", None)


def with_new_unreadable(batch: dict, before: frozenset[int], after: frozenset[int]) -> dict:
    """`batch` with KEY = the indices in `after` but not `before`, sorted (int64), when there are any."""
    new = after - before
    if new:
        batch[KEY] = np.array(sorted(new), np.int64)
    return batch


class SkippedFiles:
    """Union of the unreadable files that batches report under KEY.  ``take`` runs in the
    device-prefetch thread, ``len`` in the training loop."""

    def __init__(self, source: Any = None):
        # the files already met before any batch (validation reads headers) are in every worker's
        # copy of the source, so no batch reports them: start from them
        unreadable = unreadable_of(source)
        self._indices: set[int] = set(unreadable()) if unreadable else set()
        self._lock = threading.Lock()

    def take(self, batch: dict) -> dict:
        """`batch` without KEY (its indices added to the union)."""
        found = batch.pop(KEY, None)
        if found is not None:
            with self._lock:
                self._indices.update(int(i) for i in found)
        return batch

    def __len__(self) -> int:
        with self._lock:
            return len(self._indices)
