"""Page faults and system time of single train steps (vit_jax.bench's step, as train_step_vs_torch.ours
builds it), with or without vit_jax/host_memory.py's glibc settings (or any GLIBC_TUNABLES given).

    python benchmarks/step_page_faults.py --model vit_small_patch16_224 --batch 32 --steps 3 [--keep_host_memory]

After one warm-up step, each step is timed alone and `resource.getrusage` gives the minor page
faults and the system / user CPU seconds it cost; one JSON line per step.
"""
from __future__ import annotations

import json
import resource
import time

from train_step_vs_torch import one_step, one_step_args
from vit_jax import host_memory


def main(argv=None) -> None:
    p = one_step_args(__doc__)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--keep_host_memory", action="store_true", help="apply host_memory.keep_freed_memory first")
    a = p.parse_args(argv)
    if a.keep_host_memory and not host_memory.keep_freed_memory():
        raise SystemExit("--keep_host_memory: not applied (needs glibc)")
    step = one_step(a)
    step()
    for i in range(a.steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"step": i, "seconds": round(dt, 3), "minor_faults": r1.ru_minflt - r0.ru_minflt,
                          "system_s": round(r1.ru_stime - r0.ru_stime, 2),
                          "user_s": round(r1.ru_utime - r0.ru_utime, 2),
                          "keep_host_memory": a.keep_host_memory}), flush=True)


if __name__ == "__main__":
    main()
