"""The bench command times the real train step and reports what it promises."""
import json
import subprocess
import sys

from tests import subprocess_run
from vit_jax import bench


def test_bench_in_process():
    r = bench.bench("vit_tiny_patch2_8", 8, steps=2, repeats=2, image_size=8, num_classes=10,
                    overrides=dict(width=16, depth=1, num_heads=2))
    assert r["images_per_sec"] > 0 and r["step_ms"] > 0 and r["compile_s"] > 0
    assert r["gflop_per_step"] > 0 and r["tflops"] > 0
    assert len(r["step_ms_runs"]) == 2 and r["mfu"] is None  # CPU peak is unknown


def test_bench_cli_json():
    out = subprocess.run([sys.executable, "-m", "vit_jax.bench", "--model", "vit_tiny_patch4_16",
                          "--batch", "4", "--steps", "1", "--repeats", "1", "--json"],
                         env=subprocess_run.env(1), cwd=subprocess_run.ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["model"] == "vit_tiny_patch4_16" and r["batch"] == 4 and r["image_size"] == 16
