"""Runs `python -m vit_jax.main` in a child process with a chosen number of CPU devices."""
import os
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


def run(workdir: str, *overrides: str, devices: int = 1, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, *overrides), env=env(devices), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


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
