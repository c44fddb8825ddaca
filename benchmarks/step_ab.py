"""Before and after: our train step from two checkouts of vit_jax, each in a process of its own,
timed in alternating windows on the same machine at the same time.

    git worktree add /tmp/before <commit>
    python benchmarks/step_ab.py --before /tmp/before [--objective mae] --steps 1 --repeats 10
    python benchmarks/step_ab.py --before . --after_xla_flags=--xla_cpu_use_fusion_emitters=false

Each side builds `train_step_vs_torch.ours` (vit_jax.bench's step) from its own checkout, with
glibc keeping freed memory (as vit_jax.main runs). Alternating windows put a noisy neighbour's
slow seconds on both sides instead of one; run one after the other, two runs of the same code
differed by 5-20 % on the 2-core development machine. Prints the windows, the medians and
`after_over_before: X` (images/s; > 1: the change is faster). Each side's process keeps its peak
heap, about 9 GB for ViT-S/16 b32: mind the memory for larger models.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys

import train_step_vs_torch as harness

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_step(tree: str, *args, **kw):
    """harness.ours(*args, **kw) with vit_jax and the benchmarks imported from checkout `tree`."""
    if os.path.realpath(tree) != os.path.realpath(HERE):
        for name in [m for m in sys.modules if m.split(".")[0] in ("vit_jax", "train_step_vs_torch")]:
            del sys.modules[name]
        # a spawned child starts with the parent's sys.path (PYTHONPATH set for it alone is lost)
        sys.path[:0] = [tree, os.path.join(tree, "benchmarks")]
    import train_step_vs_torch
    import vit_jax
    found = os.path.dirname(os.path.dirname(os.path.abspath(vit_jax.__file__)))
    if os.path.realpath(found) != os.path.realpath(tree):
        raise RuntimeError(f"vit_jax came from {found}, not {tree}")
    return train_step_vs_torch.ours(*args, **kw)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="a checkout of vit_jax (e.g. a git worktree)")
    p.add_argument("--after", default=HERE, help="default: this checkout")
    p.add_argument("--model", default="vit_small_patch16_224", choices=sorted(harness.SIZES))
    p.add_argument("--objective", default="supervised", help="supervised or mae (vit_jax.aot.build_step)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--before_xla_flags", default=None, help="XLA_FLAGS for the before side's process")
    p.add_argument("--after_xla_flags", default=None, help="XLA_FLAGS for the after side's process")
    a = p.parse_args(argv)
    for tree in (a.before, a.after):
        if not os.path.isdir(os.path.join(tree, "vit_jax")):
            raise SystemExit(f"{tree} holds no vit_jax/: give a checkout of this repository")
    _, _, size = harness.SIZES[a.model]
    runs = {}
    inherited = os.environ.get("XLA_FLAGS")
    for side, tree, flags in (("before", a.before, a.before_xla_flags), ("after", a.after, a.after_xla_flags)):
        # a spawned child starts with this process' environment as it is at the spawn
        os.environ.pop("XLA_FLAGS", None)
        if flags is not None or inherited is not None:
            os.environ["XLA_FLAGS"] = flags if flags is not None else inherited
        runs[side] = harness.InChild(functools.partial(tree_step, tree, objective=a.objective),
                                     (a.model, a.batch, size, 1000), keep_host_memory=True)
    times = harness.compare(runs, a.warmup, a.steps, a.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"model": a.model, "objective": a.objective, "batch": a.batch,
                      "step_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
                      "median_s": {k: round(t, 3) for k, t in med.items()}}))
    print(f"after_over_before: {med['before'] / med['after']:.3f}")


if __name__ == "__main__":
    main()
