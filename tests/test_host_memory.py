"""vit_jax.host_memory: with its settings a jitted step that frees ~200 MB of temporaries faults
(almost) no page in again on its next call; with glibc's defaults it faults them all."""
from __future__ import annotations

import json
import platform
import sys

import pytest

from tests import subprocess_run

_CHILD = """
import json, resource, sys
from vit_jax import host_memory
kept = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
@jax.jit
def step(x, w):   # (4096, 4096) temporaries of 64 MB, freed when the call returns
    y = jnp.sin(x) @ w
    return jnp.sum(jnp.tanh(y) @ w.T)
x, w = jnp.ones((4096, 256), jnp.float32), jnp.ones((256, 4096), jnp.float32)
step(x, w).block_until_ready(); step(x, w).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step(x, w).block_until_ready()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _faults(env: dict) -> dict:
    out = subprocess_run.run_command([sys.executable, "-c", _CHILD], timeout=300, env=subprocess_run.env(**env))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_steps_stop_faulting_their_temporaries_in():
    kept = _faults({})
    default = _faults({"VIT_JAX_KEEP_HOST_MEMORY": "0"})
    assert kept["kept"] is True and default["kept"] is False
    # 3 calls x a 64 MB temporary = ~48k pages of 4 KB with the defaults
    assert default["faults"] > 30_000, default
    assert kept["faults"] < default["faults"] / 8, (kept, default)
