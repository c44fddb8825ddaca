"""A folder's file list as a memory-mapped index: what reaches each grain worker is its name.

PathTable holds the paths of an image folder in three arrays: the names' UTF-8 bytes back to
back, their end offsets, and each file's directory id. They are written once per host to an index
folder (np.save) and read back with np.load(mmap_mode="r"), by the process that lists the folder
and by every worker process it spawns (again at each resume and evaluation): all of them read the
same pages of the OS page cache, and a pickled table holds the index folder's name and the
directories, so its size does not grow with the number of files (about 46 MB of index for 1.3M
ImageNet files, once, instead of a copy in every worker).

The index folder is named by a hash of its content, under the host's temp dir, per user: a run
killed without cleanup leaves nothing the next run with the same listing does not reuse,
concurrent runs on one folder share it, and the OS clears it. If it vanishes while a run lives,
the next pickle writes it again from the run's own mapping (still readable). Where it cannot be
written (a read-only or full temp dir) the arrays stay in memory and pickle whole, as before.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

_ARRAYS = ("names", "ends", "dir_index")   # the index folder's files, <name>.npy


def index_root() -> str:
    """<temp dir>/vit_jax-folder-index-<uid>: per host, and per user (another user's folder would
    not be writable)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"vit_jax-folder-index-{uid}")


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in _ARRAYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.size};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:32]


def _complete(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, k + ".npy")) for k in _ARRAYS)


def _save(folder: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes the index under a temporary name and renames it into place, so that no reader ever
    sees half of one; a process that lost the race to an identical index keeps the winner's."""
    root = os.path.dirname(folder)
    os.makedirs(root, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=root)
    try:
        for k in _ARRAYS:
            np.save(os.path.join(tmp, k + ".npy"), np.ascontiguousarray(arrays[k]))
        if os.path.isdir(folder) and not _complete(folder):
            shutil.rmtree(folder, ignore_errors=True)   # a damaged index: replace it
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _complete(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class PathTable:
    """The paths of `dirs[d]/names[d][k]`, in that order; reads like a list of paths: len, [j],
    iteration, ==. `names` may be a generator, one directory's names at a time, so that listing a
    folder never holds more than one directory's names as Python strings."""

    def __init__(self, dirs: Sequence[str], names: Iterable[Sequence[str]]):
        self.dirs = list(dirs)
        blobs: list[bytes] = []
        lengths: list[np.ndarray] = []
        counts: list[int] = []
        for ns in names:
            encoded = [n.encode("utf-8", "surrogateescape") for n in ns]
            blobs.append(b"".join(encoded))
            lengths.append(np.fromiter(map(len, encoded), np.int64, len(encoded)))
            counts.append(len(encoded))
        if len(counts) != len(self.dirs):
            raise ValueError(f"{len(self.dirs)} directories but {len(counts)} lists of names")
        arrays = {"names": np.frombuffer(b"".join(blobs), np.uint8),
                  "ends": np.cumsum(np.concatenate([np.zeros(0, np.int64), *lengths])),
                  "dir_index": np.repeat(np.arange(len(counts), dtype=np.int32), counts)}
        del blobs, lengths
        self._folder: str | None = os.path.join(index_root(), _digest(arrays))
        try:
            if not _complete(self._folder):
                _save(self._folder, arrays)
            self._open()
        except (OSError, ValueError) as e:   # ValueError: np.load of a damaged file
            print(f"note: cannot write the folder index {self._folder} ({e}); the list of "
                  f"{len(arrays['dir_index'])} files is copied into each worker process instead",
                  flush=True)
            self._folder, self._arrays = None, arrays

    def _open(self) -> None:
        assert self._folder is not None
        self._arrays = {k: np.load(os.path.join(self._folder, k + ".npy"), mmap_mode="r")
                        for k in _ARRAYS}

    @property
    def dir_index(self) -> np.ndarray:
        """Each file's directory id (int32), memory-mapped."""
        return self._arrays["dir_index"]

    def __getstate__(self) -> dict[str, Any]:
        if self._folder is None:     # no index on disk: the arrays themselves
            return {"dirs": self.dirs, "folder": None, "arrays": dict(self._arrays)}
        if not _complete(self._folder):   # deleted under a live run: write it again
            _save(self._folder, {k: np.asarray(a) for k, a in self._arrays.items()})
        return {"dirs": self.dirs, "folder": self._folder, "n": len(self),
                "nbytes": int(self._arrays["names"].size)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dirs, self._folder = state["dirs"], state["folder"]
        if self._folder is None:
            self._arrays = state["arrays"]
            return
        self._open()
        if len(self) != state["n"] or self._arrays["names"].size != state["nbytes"]:
            raise RuntimeError(f"the folder index {self._folder} does not hold the table pickled "
                               f"({state['n']} files); delete the folder and start again")

    def __len__(self) -> int:
        return len(self._arrays["dir_index"])

    def __getitem__(self, j: int) -> str:
        n, j = len(self), int(j)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"index {j} out of range for {n} paths")
        ends = self._arrays["ends"]
        start = int(ends[j - 1]) if j else 0
        name = bytes(self._arrays["names"][start:int(ends[j])]).decode("utf-8", "surrogateescape")
        return os.path.join(self.dirs[int(self._arrays["dir_index"][j])], name)

    def __iter__(self) -> Iterator[str]:
        return (self[j] for j in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, PathTable)) else NotImplemented
