"""Test setup: 8 simulated CPU devices (sharding tests use them all, others use one)."""
import os
import tempfile

# XLA's backend optimisation level 0: the tests' tiny programs compile about twice as fast (compile
# time dominates the suite) and run a little slower; nothing here measures XLA's speed.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# converted teachers (dinov2_vits14) go to a fresh cache, not the user's ~/.cache
os.environ.setdefault("VIT_JAX_CACHE", tempfile.mkdtemp(prefix="vit_jax_test_cache_"))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)  # before any vit_jax import can touch a device

import pytest  # noqa: E402

from tests.tiny_config import epochs_config  # noqa: E402
from vit_jax import train  # noqa: E402


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """(workdir, summary) of the tiny run (tests/tiny_config.py:epochs_config), trained once per
    session: checkpoints at steps 4, 8, 12. Tests that change it work on a copy."""
    workdir = str(tmp_path_factory.mktemp("finished_run"))
    summary = train.run(epochs_config(), workdir)
    return workdir, summary
