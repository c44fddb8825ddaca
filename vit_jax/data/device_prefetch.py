"""Device prefetch: the next batches go onto the devices from a background thread while the
current step runs, so the host-to-device copy overlaps the computation (flax's prefetch_to_device
idea, for any loader).

The wrapper keeps the loader's interface. Its `state()` is the consumer's position (the step of
the next batch handed to the loop), not the loader's, which runs up to `depth` + 1 batches ahead, so a
checkpoint saved mid-run resumes exactly. An error the loader raises (a bad image) reaches the
loop at the batch where it happened, after the batches before it.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_STOP_POLL_S = 0.1


class DevicePrefetch:
    """Wraps a training loader (state / set_state / epoch / close, iterable) and `to_device`
    (host batch -> device arrays); keeps `depth` device batches ready (0: converts each batch
    when it is asked for, in the caller's thread)."""

    def __init__(self, loader: Any, to_device: Callable[[dict], dict], depth: int = 2):
        if depth < 0:
            raise ValueError(f"data.device_prefetch={depth} must be >= 0 (0: off)")
        self.loader, self.to_device, self.depth = loader, to_device, depth
        self._thread: threading.Thread | None = None
        self._next = int(loader.state()["step"])

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = ("batch", self.to_device(next(self.loader)))
            except BaseException as e:   # handed to the consumer at this position
                item = ("error", e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=_STOP_POLL_S)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop),
                                        name="device-prefetch", daemon=True)
        self._thread.start()

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    # -- the loader's interface ------------------------------------------------------
    def state(self) -> dict[str, int]:
        return {"step": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._halt()
        self.loader.set_state(state)
        self._next = int(state["step"])

    def epoch(self, step: int | None = None) -> float:
        return self.loader.epoch(self._next if step is None else step)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.depth == 0:
            batch = self.to_device(next(self.loader))
            self._next += 1
            return batch
        if self._thread is None:
            self._start()
        kind, value = self._queue.get()
        if kind == "error":
            self._thread = None      # the producer has stopped; the loader's state is past it
            raise value
        self._next += 1
        return value

    def close(self) -> None:
        self._halt()
        self.loader.close()
