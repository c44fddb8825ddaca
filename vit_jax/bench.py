"""Train-step throughput: `python -m vit_jax.bench --model NAME --batch B [--steps N]`.

Times the same jitted train step that train.py runs (supervised objective, AdamW, random
data already on device), reporting compile time apart from step time. Step time is the
median over `--repeats` timed windows of `--steps` steps each. TFLOP/s use XLA's own
FLOP count of the compiled step; MFU divides by the device's peak where it is known.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from vit_jax import aot, host_memory, models, sharding

# Dense peak TFLOP/s per device, by jax device_kind (bf16 unless noted).
PEAK_TFLOPS = {
        "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100": 989.0, "NVIDIA H200": 989.0,
        "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0,
        "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5": 459.0, "TPU v6 lite": 918.0,
}


def _peak(kind: str) -> float | None:
    for name, peak in PEAK_TFLOPS.items():
        if kind.startswith(name):
            return peak
    return None


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def bench(model: str, batch: int, steps: int = 10, repeats: int = 3, image_size: int | None = None,
                    dtype: str = "float32", num_classes: int = 1000, mesh: tuple[int, int, int] = (-1, 1, 1),
                    overrides: dict | None = None) -> dict:

    size = image_size or _image_size(model)
    mesh_ = sharding.make_mesh(*mesh)
    # the same step aot.py compiles for simulated devices, here on real ones with real arrays
    built = aot.build_step(model, batch, size, mesh_, dtype=dtype, num_classes=num_classes,
                           overrides=overrides)
    state, step_fn, abstract = built["init"](jax.random.PRNGKey(0)), built["step"], built["state"]
    rs = np.random.default_rng(0)
    data = sharding.global_batch({
            "image": rs.standard_normal((batch, size, size, 3), dtype=np.float32),
            "label": rs.integers(0, num_classes, (batch,)).astype(np.int32)}, mesh_)

    t0 = time.perf_counter()
    compiled = step_fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    state, m = compiled(state, data)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, data)
        jax.block_until_ready((state, m))
        times.append((time.perf_counter() - t0) / steps)
    step_s = statistics.median(times)
    n_dev = jax.device_count()
    kind = jax.devices()[0].device_kind
    peak = _peak(kind)
    # cost_analysis reports the per-device program's FLOPs
    tflops = flops * n_dev / step_s / 1e12
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    return {
            "model": model, "params": n_params, "batch": batch, "image_size": size, "dtype": dtype,
            "device": f"{n_dev} x {kind} ({jax.default_backend()})", "compile_s": round(compile_s, 2),
            "step_ms": round(step_s * 1e3, 2), "step_ms_runs": [round(t * 1e3, 2) for t in times],
            "images_per_sec": round(batch / step_s, 2), "gflop_per_step": _sig(flops * n_dev / 1e9),
            "tflops": _sig(tflops),
            "mfu": _sig(tflops / (peak * n_dev)) if peak else None,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=5, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--aot", action="store_true",
                   help="compile, do not run: per-device memory, FLOPs and collectives (vit_jax/aot.py)")
    p.add_argument("--devices", type=int, default=0, help="--aot: simulated CPU devices (0: the real ones)")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,model sizes (one may be -1)")
    p.add_argument("--objective", default="supervised", help="--aot: supervised | mae")
    p.add_argument("--remat", action="store_true", help="--aot: rematerialise each block")
    p.add_argument("--scan", action="store_true", help="--aot: the blocks as one nn.scan loop (model.scan)")
    p.add_argument("--accum", type=int, default=1, help="--aot: microbatches per step (gradient accumulation)")
    a = p.parse_args(argv)
    host_memory.keep_freed_memory()   # the settings vit_jax.main runs with (host_memory.py)
    mesh = tuple(int(x) for x in a.mesh.split(","))
    if len(mesh) != 3:
        p.error(f"--mesh {a.mesh!r}: give three sizes data,fsdp,model, e.g. 8,8,1")
    if a.aot:
        if a.devices:   # before anything asks for a device: the CPU backend starts with N
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", a.devices)
        size = a.image_size or _image_size(a.model)
        r = aot.plan(a.model, a.batch, mesh, image_size=size, objective=a.objective, dtype=a.dtype,
                     remat=a.remat, accum=a.accum, scan=a.scan)
    else:
        r = bench(a.model, a.batch, a.steps, a.repeats, a.image_size, a.dtype, mesh=mesh)
    if a.json:
        print(json.dumps(r))
        return
    for k, v in r.items():
        print(f"{k:>16}: {v}")


def _image_size(model: str) -> int:
    size = getattr(models.create(model), "image_size", 224)
    return size[0] if isinstance(size, (tuple, list)) else size


if __name__ == "__main__":
    main()
