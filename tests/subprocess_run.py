"""Runs `python -m vit_jax.main` in a child process with a chosen number of CPU devices."""
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices: int = 1, **extra: str) -> dict:
    e = dict(os.environ)
    e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
    e.update(extra)
    return e


def command(workdir: str, *overrides: str, config: str = "tests/tiny_config.py") -> list[str]:
    return [sys.executable, "-m", "vit_jax.main", f"--config={os.path.join(ROOT, config)}",
            f"--workdir={workdir}", *overrides]


def communicate(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """proc.communicate(timeout), but on a timeout its whole process group is killed (a child
    killed alone leaves grandchildren, grain's workers or a coordinator peer, running on beside
    the next tests) and the error carries what it printed. `proc` must be started with
    start_new_session=True."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args)} ran past {timeout:.0f} s and was killed with its "
                             f"children\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-3000:]}") from None


def popen(cmd: list[str], **kw) -> subprocess.Popen:
    """A child in its own session (so `communicate` can kill its process group), text pipes."""
    kw = {"env": env(), "cwd": ROOT, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kw}
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def run_command(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, timeout=...) that kills the child's
    process group on a timeout (see `communicate`)."""
    proc = popen(cmd, **kw)
    out, err = communicate(proc, timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(workdir: str, *overrides: str, devices: int = 1, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return run_command(command(workdir, *overrides), timeout, env=env(devices), **kw)


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, read from /proc (Linux; no procps needed)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()   # after "(comm)", which may hold spaces
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                out.append(int(name))
    return out


def spawned_workers(pid: int) -> set[int]:
    """The live children of `pid` that multiprocessing's spawn started (grain's worker processes)."""
    found = set()
    for k in children(pid):
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.add(k)
        except OSError:
            continue
    return found
