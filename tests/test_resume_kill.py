"""A run killed with SIGKILL and started again ends exactly like an uninterrupted run."""
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from tests import subprocess_run
from vit_jax import checkpoint, metrics

# A slower tiny run (bigger images and model) so the kill lands mid-training.
OVERRIDES = ("--config.data.name=mnist5k", "--config.model_name=vit_tiny_patch4_28",
             "--config.data.train_transform=random_crop_with_padding(28, 2)|normalize('mnist')",
             "--config.data.eval_transform=normalize('mnist')", "--config.model.width=32",
             "--config.model.mlp_dim=64", "--config.total_steps=40", "--config.checkpoint_every=10",
             "--config.eval_every=20", "--config.log_every=5", "--config.batch_size=32",
             "--config.async_checkpoints=True")
KILL_AFTER = 10


def deterministic_rows(workdir):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    """The uninterrupted run (thread loader): the rows and parameters every resumed run must give."""
    ref = str(tmp_path_factory.mktemp("ref"))
    done = subprocess_run.run(ref, *OVERRIDES, "--config.progress=True")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[step     40/40] loss" in done.stdout and "img/s  ETA" in done.stdout
    return ref


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("loader", ["threads", "grain"])
def test_sigkill_then_resume_is_exact(ref_run, tmp_path, loader):
    """Killed and resumed on either loader (grain: 2 worker processes), the run ends as the
    uninterrupted thread-loader run; grain's workers do not outlive the killed run."""
    killed = str(tmp_path / "killed")
    overrides = OVERRIDES + (f"--config.data.loader={loader}", "--config.data.workers=2")
    proc = subprocess.Popen(subprocess_run.command(killed, *overrides), env=subprocess_run.env(),
                            cwd=subprocess_run.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(killed, "checkpoints", str(KILL_AFTER))
    deadline = time.time() + 240
    while not os.path.isdir(ckpt_dir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    children = subprocess_run.children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    steps_seen = [r["step"] for r in metrics.read_jsonl(os.path.join(killed, "metrics.jsonl"))]
    assert max(steps_seen, default=0) < 40
    deadline = time.time() + 30
    while any(map(_alive, children)) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, children)), f"processes {children} outlived the killed run"

    again = subprocess_run.run(killed, *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout

    assert deterministic_rows(killed) == deterministic_rows(ref_run)
    a, b = checkpoint.load_params(ref_run), checkpoint.load_params(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
