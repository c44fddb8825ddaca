"""Test setup: 8 simulated CPU devices (sharding tests use them all, others use one)."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# converted teachers (dinov2_vits14) go to a fresh cache, not the user's ~/.cache
os.environ.setdefault("VIT_JAX_CACHE", tempfile.mkdtemp(prefix="vit_jax_test_cache_"))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
