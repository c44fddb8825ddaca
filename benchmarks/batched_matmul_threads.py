"""Attention's batched matmuls on XLA:CPU: which library runs each form, its time and how many
cores it keeps busy, beside torch.matmul on the same shapes.

    python benchmarks/batched_matmul_threads.py [--batch 192 --rows 197 --depth 64]

ViT-S/16 b32's attention is 192 (batch x heads) products of (197, 64) and (197, 197) operands,
0.95 GFLOP each. The forms are the six products of attention's forward and backward. For each:
the median time of `--repeats` calls, GFLOP/s, CPU time over wall time (1.0: one core busy,
2.0: both), and the kernel XLA compiled it to (ynn_fusion: YNNPACK; dot: XLA's own / Eigen).

Then the logits form again with the same FLOPs in fewer, taller products, (batch / f, rows * f)
queries against (batch / f, rows) keys: which shapes YNNPACK spreads over both cores (it splits
a product's rows, not its batch).
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from vit_jax import host_memory

# name: (einsum, lhs dims, rhs dims) with m = query rows, n = key rows, k = head depth
FORMS = {
    "logits = q k^T": ("bmk,bnk->bmn", "bmk", "bnk"),
    "out = p v": ("bmn,bnk->bmk", "bmn", "bnk"),
    "d_p = d_out v^T": ("bmk,bnk->bmn", "bmk", "bnk"),
    "d_v = p^T d_out": ("bmn,bmk->bnk", "bmn", "bmk"),
    "d_q = d_s k": ("bmn,bnk->bmk", "bmn", "bnk"),
    "d_k = d_s^T q": ("bmn,bmk->bnk", "bmn", "bmk"),
}


def timed(fn, repeats: int) -> tuple[float, float]:
    """-> (median seconds, CPU seconds / wall seconds) over `repeats` calls after one warm-up."""
    fn()
    times = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return statistics.median(times), cpu / sum(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=192)
    p.add_argument("--rows", type=int, default=197)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args(argv)
    host_memory.keep_freed_memory()    # as vit_jax.main runs: no page faults in the timings
    size = {"b": a.batch, "m": a.rows, "n": a.rows, "k": a.depth}
    rng = np.random.default_rng(0)
    for name, (eq, lhs, rhs) in FORMS.items():
        x, y = (rng.standard_normal([size[c] for c in dims], dtype=np.float32) for dims in (lhs, rhs))
        f = jax.jit(lambda x, y, eq=eq: jnp.einsum(eq, x, y))
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        hlo = f.lower(xj, yj).compile().as_text()
        kernel = "ynn_fusion" if "ynn_fusion" in hlo else ("dot" if re.search(r"= \S+ dot\(", hlo) else "other")
        ours, ours_cores = timed(lambda: f(xj, yj).block_until_ready(), a.repeats)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        theirs, theirs_cores = timed(lambda: torch.einsum(eq, xt, yt), a.repeats)
        gflop = 2 * a.batch * a.rows * a.rows * a.depth / 1e9
        print(json.dumps({"product": name, "einsum": eq, "xla_kernel": kernel,
                          "ours_ms": round(1e3 * ours, 2), "ours_gflops": round(gflop / ours, 1),
                          "ours_cpu_over_wall": round(ours_cores, 2),
                          "torch_ms": round(1e3 * theirs, 2), "torch_gflops": round(gflop / theirs, 1),
                          "torch_cpu_over_wall": round(theirs_cores, 2)}))
    f = jax.jit(lambda x, y: jnp.einsum("bmk,bnk->bmn", x, y))
    for taller in [t for t in (1, 2, 4, 6, 32, a.batch) if a.batch % t == 0]:
        b, m = a.batch // taller, a.rows * taller
        x = jnp.asarray(rng.standard_normal((b, m, a.depth), dtype=np.float32))
        y = jnp.asarray(rng.standard_normal((b, a.rows, a.depth), dtype=np.float32))
        ours, ours_cores = timed(lambda: f(x, y).block_until_ready(), a.repeats)
        print(json.dumps({"product": "logits, same FLOPs, taller", "batch": b, "query_rows": m,
                          "ours_ms": round(1e3 * ours, 2),
                          "ours_gflops": round(2 * b * m * a.rows * a.depth / 1e9 / ours, 1),
                          "ours_cpu_over_wall": round(ours_cores, 2)}))


if __name__ == "__main__":
    main()
