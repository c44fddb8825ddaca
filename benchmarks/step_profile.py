"""Where XLA:CPU spends a train step: a jax.profiler trace of vit_jax.bench's step, each executed
HLO instruction's time, grouped by who runs it (a kernel library: matmuls, convolutions, some
reductions; or XLA's own elementwise loops and copies) and by its output shape.

    python benchmarks/step_profile.py --model vit_small_patch16_224 --batch 32 [--top 20] [--block blocks_5/]

Prints the groups by total time, then the `--top` instructions with the op they came from
(their metadata's op_name); with `--block`, every instruction of that block (op_name contains
the text) in the order they ran, forward and backward. Thunks may overlap on several cores: the
sums can exceed the step.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax

from train_step_vs_torch import one_step, one_step_args


def main(argv=None) -> None:
    p = one_step_args(__doc__)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--block", default="", help="e.g. blocks_5/: that block's instructions in order")
    a = p.parse_args(argv)
    step = one_step(a)
    hlo = step.hlo_text()
    step(), step()
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        step()
        jax.profiler.stop_trace()
        trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    spent: collections.Counter = collections.Counter()
    started: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X":
            spent[e["name"]] += e.get("dur", 0) / 1e3
            started.setdefault(e["name"], e["ts"])
    lines = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
        if m:
            lines[m.group(1)] = line
    groups: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    found = [(ms, name) for name, ms in spent.items() if name in lines]
    for ms, name in found:
        shape = lines[name].split(" = ")[1].split(" ")[0].split("{")[0]
        # XLA:CPU names the fusions it hands to its kernel libraries (matmuls, convolutions and
        # some reductions) ynn_, xnn_, onednn_; the rest is XLA's own loops and copies
        kind = "library" if re.match(r"(ynn|xnn|onednn)_fusion|convolution|dot|custom-call", name) else "xla"
        groups[(kind, shape)] += ms
        counts[(kind, shape)] += 1
    print(json.dumps({"model": a.model, "batch": a.batch, "instructions_ms": round(sum(ms for ms, _ in found), 1)}))
    for (kind, shape), ms in groups.most_common(25):
        print(f"{ms:9.1f} ms {counts[(kind, shape)]:4d}x  {kind:12s} {shape}")
    print()
    for ms, name in sorted(found, reverse=True)[:a.top]:
        op = re.search(r'op_name="([^"]+)"', lines[name])
        print(f"{ms:9.1f} ms  {name:34s} {op.group(1)[-90:] if op else ''}")
    if a.block:
        print(f"\n{a.block}: each instruction in the order it started")
        total = 0.0
        for name in sorted((n for _, n in found), key=started.get):
            op = re.search(r'op_name="([^"]+)"', lines[name])
            if op and a.block in op.group(1):
                shape = lines[name].split(" = ")[1].split(" ")[0].split("{")[0]
                way = "bwd" if "transpose(" in op.group(1) else "fwd"
                print(f"{spent[name]:8.2f} ms  {way}  {name:30s} {shape:22s} {op.group(1).split(a.block)[-1][:60]}")
                total += spent[name]
        print(f"{total:8.1f} ms  {a.block} in all")


if __name__ == "__main__":
    main()
