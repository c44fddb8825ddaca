"""Per-step costs read from a compiled XLA module's text, with loops counted as they run.

XLA's cost analysis counts a while loop's body once, so a step whose blocks are one nn.scan loop
(model.scan) or whose microbatches are a lax.scan (grad_accum_steps) reports a fraction of its
FLOPs. Here every computation gets its multiplicity: how often one step runs it (a while body runs
known_trip_count times per call; fusions, calls and reductions run once per call of their caller),
and the collectives' bytes and the matmul / convolution FLOPs are summed with it. A loop without
a known trip count (none in a train step: scans have one) is counted once, as XLA does.
"""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8}
# "%name = f32[8,16]{1,0} all-gather(" or "(f32[4], f32[4]) all-reduce-start(": the result type(s)
# before the op name
_OP = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->.*\{\s*$")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([0-9,]*)\]")
_PARAM = re.compile(r"([\w.\-]+):\s*(\w+)\[([0-9,]*)\]")
_CALLEE = re.compile(r"\b(?:calls|to_apply|condition|body)=%?([\w.\-]+)")
_CALLEES = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_OPERANDS = re.compile(r"\b(dot|convolution)\(\s*%?([\w.\-]+)\s*,\s*%?([\w.\-]+)")


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",") if d)


def computations(hlo_text: str) -> dict[str, list[str]]:
    """name -> its instruction lines; lines outside any computation go under "" (a bare snippet).
    The entry computation is also listed under "ENTRY"."""
    comps: dict[str, list[str]] = defaultdict(list)
    name = ""
    for line in hlo_text.splitlines():
        m = _HEADER.match(line)
        if m:
            name = m.group(1)
            comps[name].append(line)
            if line.startswith("ENTRY"):
                comps["ENTRY"] = comps[name]
            continue
        if line.strip() == "}":
            name = ""
            continue
        comps[name].append(line)
    return dict(comps)


def multiplicities(comps: dict[str, list[str]]) -> dict[str, int]:
    """How many times one run of the entry computation runs each computation."""
    edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, lines in comps.items():
        if name == "ENTRY":
            continue
        for line in lines[1:] if name else lines:
            trip = _TRIP.search(line)
            for callee in _CALLEE.findall(line):
                body = re.search(r"\bbody=%?" + re.escape(callee) + r"(?![\w.\-])", line)
                edges[name].append((callee, int(trip.group(1)) if body and trip else 1))
            for group in _CALLEES.findall(line):
                edges[name] += [(c.strip().lstrip("%"), 1) for c in group.split(",") if c.strip()]
    entry = next((n for n, ls in comps.items() if n != "ENTRY" and ls and ls[0].startswith("ENTRY")), "")
    mult: dict[str, int] = defaultdict(int)
    mult[entry] = 1
    mult[""] = 1
    # HLO computations form a DAG: push counts down in an order where callers come first
    order, seen = [], set()

    def visit(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for c, _ in edges.get(n, ()):
            visit(c)
        order.append(n)
    for n in list(comps):
        visit(n)
    for n in reversed(order):
        for c, k in edges.get(n, ()):
            mult[c] += mult[n] * k
    return dict(mult)


def collective_bytes(hlo_text: str) -> dict[str, dict[str, int]]:
    """Per collective kind in an HLO module's text: {"count", "bytes"} per step (the bytes of the
    results each device produces; an async pair is counted once, at its -start; a collective in
    a loop body once per iteration)."""
    comps = computations(hlo_text)
    mult = multiplicities(comps)
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    for name, lines in comps.items():
        if name == "ENTRY":
            continue
        for line in lines:
            m = _OP.search(line)
            if not m:
                continue
            kind = m.group(2)
            shapes = _SHAPE.findall(m.group(1))
            if m.group(3) and len(shapes) > 1:   # an async start returns (operands..., results...)
                shapes = shapes[len(shapes) // 2:]
            size = sum(_BYTES[dt] * int(np.prod(_dims(dims) or (1,))) for dt, dims in shapes)
            out[kind]["count"] += mult.get(name, 0)
            out[kind]["bytes"] += size * mult.get(name, 0)
    return out


def _op_flops(line: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """FLOPs of one dot (2 * output elements * contracted size) or convolution (2 * output
    elements * window size * input features per group); 0 for anything else."""
    m, out = _OPERANDS.search(line), _DEF.match(line)
    if not m or not out:
        return 0
    n_out = int(np.prod(_dims(out.group(3)) or (1,)))
    lhs = shapes.get(m.group(2))
    if lhs is None:
        return 0
    if m.group(1) == "dot":
        contract = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
        k = int(np.prod([lhs[i] for i in _dims(contract.group(1))] or [1])) if contract else 1
        return 2 * n_out * k
    window = re.search(r"window=\{size=([0-9x]+)", line)
    labels = re.search(r"dim_labels=(\w+)_", line)
    groups = re.search(r"feature_group_count=(\d+)", line)
    win = int(np.prod([int(s) for s in window.group(1).split("x")])) if window else 1
    feat = lhs[labels.group(1).index("f")] if labels else 1
    return 2 * n_out * win * feat // (int(groups.group(1)) if groups else 1)


def matmul_flops(hlo_text: str) -> tuple[int, int]:
    """(FLOPs of the module's dots and convolutions per step, the same with every computation
    counted once, as XLA's cost analysis counts a loop body)."""
    comps = computations(hlo_text)
    mult = multiplicities(comps)
    total = once = 0
    for name, lines in comps.items():
        if name == "ENTRY":
            continue
        shapes: dict[str, tuple[int, ...]] = {}
        if name and lines:
            h = _HEADER.match(lines[0])
            if h:
                shapes.update({p: _dims(d) for p, _, d in _PARAM.findall(h.group(2))})
        for line in lines:
            d = _DEF.match(line)
            if d:
                shapes[d.group(1)] = _dims(d.group(3))
        for line in lines:
            f = _op_flops(line, shapes)
            total += f * mult.get(name, 0)
            once += f
    return total, once


__all__ = ["COLLECTIVES", "collective_bytes", "computations", "matmul_flops", "multiplicities"]
