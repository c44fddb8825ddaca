"""Two processes on 127.0.0.1 (jax.distributed over CPU) train to the one-process result."""
import os
import signal
import socket

import jax
import numpy as np

from tests import subprocess_run
from vit_jax import checkpoint, metrics

OVERRIDES = ("--config.total_steps=6", "--config.eval_every=6", "--config.checkpoint_every=3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    single = subprocess_run.run(one, *OVERRIDES, devices=2)
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    procs = [subprocess_run.popen(
        subprocess_run.command(two, *OVERRIDES),
        env=subprocess_run.env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                               JAX_PROCESS_ID=str(i)))
        for i in range(2)]
    try:
        outs = [subprocess_run.communicate(p, timeout=300) for p in procs]
    finally:   # one process failing to start leaves the other waiting for its coordinator
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es), 2 device(s)" in outs[0][0]

    a, b = checkpoint.load_params(one), checkpoint.load_params(two)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
    ra = [r for r in metrics.read_jsonl(os.path.join(one, "metrics.jsonl")) if "eval/test/accuracy" in r]
    rb = [r for r in metrics.read_jsonl(os.path.join(two, "metrics.jsonl")) if "eval/test/accuracy" in r]
    assert len(ra) == len(rb) == 1
    np.testing.assert_allclose(ra[0]["eval/test/loss"], rb[0]["eval/test/loss"], rtol=1e-4)
