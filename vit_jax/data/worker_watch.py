"""A data worker process that dies stops the run with an error naming it, never a hang.

grain (0.2.18) notices a worker that died while the parent waits on that worker's queue
("terminated unexpectedly"), but not every death: one killed while still starting, before it
has read the pickled dataset, leaves the parent's thread blocked forever inside multiprocessing's
spawn (the parent writes the pickle into a pipe whose read end it keeps open until the write
ends, so a pickle over the pipe's 64 KiB never finishes), and one killed halfway through sending
a batch leaves half a message that the parent's reader waits on forever. Either way the next
batch never comes.

So WatchedIterator calls grain's iterator in a thread, and the caller waits for each batch in
slices of POLL_S seconds, between which it looks for a dead worker: a child process of this one
that appeared after the iterator was made, was seen running multiprocessing's spawn (or, never
seen alive, was started by one of grain's threads), and exited with a signal or a nonzero code.
Its status is read with waitid(WNOWAIT), which leaves the child for multiprocessing to reap. A
worker that exits with 0 (grain stops its workers that way) is never a failure, and no one looks
while no batch is awaited. Linux only (/proc); elsewhere grain's iterator is used as it is.
"""
from __future__ import annotations

import glob
import os
import queue
import signal
import threading
import weakref
from typing import Any, Callable, Iterator

POLL_S = 0.5     # how often a caller that waits for a batch looks for a dead worker
GRACE_S = 5.0    # after one is found, how long grain gets to raise its own error first
SUPPORTED = os.path.isdir("/proc/self/task") and hasattr(os, "waitid")

# grain iterators left blocked on a dead worker: closing one joins a thread that never returns,
# and so does dropping it (its __del__ closes it); kept until exit, when grain skips the join
_STUCK: list[Any] = []


class WorkerDied(RuntimeError):
    """A data worker process exited abnormally while the run waited for a batch."""


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def children() -> dict[int, int]:
    """This process' child processes, running or exited but not yet reaped, from /proc:
    {pid: the id of the thread that started it (this process' id where the kernel does not say)}."""
    pid = os.getpid()
    found: dict[int, int] = {}
    files = glob.glob(f"/proc/{pid}/task/*/children")   # each thread's children
    for f in files:
        found.update((int(k), int(f.split("/")[-2])) for k in (_read(f) or b"").split())
    if files:
        return found
    for name in os.listdir("/proc"):   # kernels without the children files: every process' parent
        stat = _read(f"/proc/{name}/stat") if name.isdigit() else None
        if stat and int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
            found[int(name)] = pid
    return found


def exit_status(pid: int) -> int | None:
    """A child's exit code (-N: killed by signal N, multiprocessing's convention), None while it
    runs; the child stays unreaped."""
    try:
        r = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:   # reaped meanwhile, or not ours
        return None
    if r is None:
        return None
    return r.si_status if r.si_code == os.CLD_EXITED else -r.si_status


def describe(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = "; often the kernel's out-of-memory killer (see dmesg)" if -code == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


class WorkerWatch:
    """Finds the spawn children started after it was made that exited abnormally: those seen
    running multiprocessing's spawn, and those that died before anyone looked (a zombie keeps no
    command line) started by one of grain's threads, the threads that start its workers."""

    def __init__(self):
        self._before = set(children())
        self._workers: set[int] = set()   # spawn children seen running

    def dead(self) -> tuple[int, int] | None:
        """(pid, exit code) of a worker that exited abnormally, or None."""
        grain_threads = {t.native_id for t in threading.enumerate() if t.name.startswith("grain")}
        for pid, tid in sorted(children().items()):
            stat = _read(f"/proc/{pid}/stat")
            if pid in self._before or stat is None:
                continue
            if stat.rsplit(b")", 1)[1].split()[0] != b"Z":
                if pid not in self._workers and b"--multiprocessing-fork" in (_read(f"/proc/{pid}/cmdline") or b""):
                    self._workers.add(pid)
                continue
            if pid in self._workers or tid in grain_threads:
                code = exit_status(pid)
                if code:
                    return pid, code
        return None


def _serve(tasks: queue.SimpleQueue) -> None:
    """Runs (fn, args, box) tasks until None; each result lands in its box as (True, result) or
    (False, exception). Holds nothing between tasks, so an iterator its owner dropped is collected."""
    while (task := tasks.get()) is not None:
        fn, args, box = task
        try:
            box.put((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001  (StopIteration too: all of it is the caller's)
            box.put((False, e))
        del task, fn, args, box


class WatchedIterator:
    """next(grain iterator) and its close in a thread; the caller's wait ends with WorkerDied
    when a worker died and neither a batch nor grain's own error follows within GRACE_S (a close
    then returns, leaving grain's iterator in _STUCK). `workers` (data.workers) is named in the
    message.

    The calls run in a thread of its own that holds the grain iterator only during a call and
    ends when this object is collected: grain closes an iterator that its user drops unclosed (and
    stops its worker processes) when it is collected, and still does."""

    def __init__(self, make: Callable[[], Iterator], workers: int):
        self._watch = WorkerWatch()   # before any worker can start
        self._it = make()
        self._workers = workers
        self._call: queue.SimpleQueue | None = None   # the result of the next() under way
        self._failed: WorkerDied | None = None
        self._stuck = False
        self._dead = (0, 0)
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(self._tasks,), name="grain-call", daemon=True).start()
        weakref.finalize(self, self._tasks.put, None)

    def _run(self, fn: Callable, *args: Any) -> queue.SimpleQueue:
        box: queue.SimpleQueue = queue.SimpleQueue()
        self._tasks.put((fn, args, box))
        return box

    def __iter__(self) -> Iterator:
        return self

    def _error(self, pid: int, code: int) -> WorkerDied:
        return WorkerDied(
            f"data worker process {pid} terminated unexpectedly with exit code {code} ({describe(code)}) "
            f"while the run waited for a batch; it is one of the data.workers={self._workers} grain "
            f"worker processes, and its own output above holds any traceback it printed. Lower "
            f"data.workers or data.prefetch if memory is short; data.loader=threads makes the batches "
            f"in this process, to debug")

    def _wait(self, box: queue.SimpleQueue) -> tuple[bool, Any] | None:
        """(ok, value) from the box, or None once GRACE_S have passed since a dead worker was found
        with nothing in the box: then grain is stuck for good, its iterator parked in _STUCK and
        the worker's (pid, exit code) in self._dead."""
        dead, waited = None, 0.0
        while True:
            try:
                return box.get(timeout=POLL_S)
            except queue.Empty:
                dead = dead or self._watch.dead()
                waited = waited + POLL_S if dead else 0.0
                if dead and waited >= GRACE_S:
                    self._stuck, self._dead = True, dead
                    _STUCK.append(self._it)
                    return None

    def __next__(self) -> Any:
        if self._failed is not None:   # grain would go on without the dead worker's batches
            raise self._failed
        if self._call is None:   # else: a wait the caller abandoned (Ctrl-C) is still under way
            self._call = self._run(next, self._it)
        result = self._wait(self._call)
        if result is None:
            self._failed = self._error(*self._dead)
            raise self._failed
        self._call = None
        ok, value = result
        if ok:
            return value
        if not isinstance(value, StopIteration):
            dead = self._watch.dead()
            if dead is not None:   # grain's own "terminated unexpectedly", or what it led to
                self._failed = self._error(*dead)
                raise self._failed from value
        raise value

    def close(self) -> None:
        """grain's close; it joins the thread that starts each worker, which a worker killed while
        starting blocks for good: then this returns after GRACE_S."""
        if self._stuck:
            return
        if self._call is not None:   # an abandoned wait: let it end before closing under it
            self._wait(self._call)
            self._call = None
        if not self._stuck and hasattr(self._it, "close"):
            self._wait(self._run(self._it.close))
