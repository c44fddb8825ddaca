"""data.device_prefetch: batches put on the devices ahead by a thread, the stream and the resume
position unchanged."""
import os
import threading
import time

import numpy as np
import pytest

from tests.tiny_config import epochs_config
from vit_jax import metrics, train
from vit_jax.data.device_prefetch import DevicePrefetch


class Counting:
    """A loader whose batch n is {"x": [n]}; raises at step `bad`; records how far it has read."""

    def __init__(self, bad=None):
        self.step, self.bad, self.closed = 0, bad, False

    def state(self):
        return {"step": self.step}

    def set_state(self, state):
        self.step = state["step"]

    def epoch(self, step):
        return step / 10

    def __next__(self):
        if self.step == self.bad:
            raise ValueError(f"bad image in batch {self.bad}")
        self.step += 1
        return {"x": np.array([self.step - 1])}

    def close(self):
        self.closed = True


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_same_stream_and_the_consumers_position(depth):
    loader = Counting()
    p = DevicePrefetch(loader, lambda b: {"x": b["x"] * 10}, depth)
    assert [int(next(p)["x"][0]) for _ in range(5)] == [0, 10, 20, 30, 40]
    assert p.state() == {"step": 5} and p.epoch(5) == 0.5
    time.sleep(0.2)
    # the loader runs ahead (depth queued + one waiting to be queued), the state does not
    assert loader.step == 5 + (depth + 1 if depth else 0)
    p.set_state({"step": 2})            # as a restore does: the stream restarts there
    assert int(next(p)["x"][0]) == 20 and p.state() == {"step": 3}
    p.close()
    assert loader.closed


def test_a_loader_error_arrives_at_its_batch():
    p = DevicePrefetch(Counting(bad=3), lambda b: b, 2)
    assert [int(next(p)["x"][0]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad image in batch 3"):
        next(p)
    assert p.state() == {"step": 3}
    p.close()


def test_close_does_not_wait_for_a_full_queue():
    p = DevicePrefetch(Counting(), lambda b: b, 1)
    next(p)
    time.sleep(0.2)                     # the producer is now blocked on the full queue
    t = time.perf_counter()
    p.close()
    assert time.perf_counter() - t < 2 and not any(t.name == "device-prefetch" for t in threading.enumerate())
    with pytest.raises(ValueError, match="data.device_prefetch=-1 must be >= 0"):
        DevicePrefetch(Counting(), lambda b: b, -1)


def test_the_run_is_the_same_with_and_without_prefetch(finished_run, tmp_path):
    """The shared tiny run (device_prefetch=2, the default) again with device_prefetch=0."""
    cfg = epochs_config()
    cfg.data.device_prefetch = 0
    train.run(cfg, str(tmp_path))
    rows = lambda d: [{k: v for k, v in r.items() if not k.startswith("perf/")}
                      for r in metrics.read_jsonl(os.path.join(d, "metrics.jsonl"))]
    assert rows(str(tmp_path)) == rows(finished_run[0])
