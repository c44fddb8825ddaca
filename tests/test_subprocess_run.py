"""The child-process runner the CLI tests share: on a timeout it kills the child's whole process
group (subprocess.run kills the child alone, and its grandchildren, grain's workers or a
coordinator peer, live on beside the next tests) and reports what the child printed."""
import sys
import time

import pytest

from tests import subprocess_run

# the child starts a grandchild that inherits stdout/stderr and outlives it by far
CHILD = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
         "print('grandchild', p.pid, flush=True); time.sleep(60)")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_timeout_kills_the_child_and_its_grandchildren():
    start = time.time()
    with pytest.raises(AssertionError, match=r"ran past 2 s and was killed with its children") as e:
        subprocess_run.run_command([sys.executable, "-c", CHILD], timeout=2)
    assert time.time() - start < 20
    grandchild = int(str(e.value).split("grandchild ")[1].split()[0])   # from the child's stdout
    deadline = time.time() + 5
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_child_that_finishes_gives_its_output_and_code():
    done = subprocess_run.run_command([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"])
    assert (done.returncode, done.stdout) == (3, "out\n")
