"""The "metrics" evaluator: the objective's per-example `eval_metrics` averaged over a split.

Writes eval/<split>/<metric> (e.g. eval/test/accuracy), and eval/<split>_ema/<metric> for the
parameter EMA when the run keeps one (config.ema_decay > 0). The sums are accumulated on the
device (float32: counts are exact below 2^24 examples); the host reads them once per split.
"""
from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp

from vit_jax import sharding
from vit_jax.evaluate.context import EvalContext

DEFAULTS = dict(split="")   # "" = data.eval_split


def check(name: str, spec) -> None:
    del name, spec


def make_eval_step(objective: Any, use_ema: bool):
    """state, batch -> sums of the per-example metrics over the real (mask == 1) rows, and the count."""
    def eval_fn(state, batch):
        params = state["ema"] if use_ema else state["params"]
        per_example = objective.eval_metrics(params, state["extra"], batch)
        mask = batch["mask"]
        sums = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
        sums["count"] = jnp.sum(mask)
        return sums
    return eval_fn


@jax.jit
def _accumulate(totals: dict, sums: dict) -> dict:
    return jax.tree.map(jnp.add, totals, sums)


def evaluate(eval_step, state, batches: Iterable[dict], mesh, prefix: str) -> dict[str, float]:
    """Means of `eval_step`'s sums over `batches` (this process' rows of padded global batches,
    e.g. EvalContext.batches), named prefix/<metric>. The sums are added up on the device and
    read once at the end, so the host never waits on a batch."""
    totals = None
    for local in batches:
        sums = eval_step(state, sharding.global_batch(local, mesh))
        totals = sums if totals is None else _accumulate(totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals or {}).items()}
    count = totals.pop("count", 0.0)
    return {f"{prefix}/{k}": v / max(count, 1.0) for k, v in totals.items()}


def make(name: str, spec, ctx: EvalContext):
    """state, step -> {"eval/<split>[_ema]/<metric>": mean}; nothing when the split is "" (off)."""
    del name
    cfg = ctx.config
    split = spec.split or cfg.data.eval_split
    steps = {"": jax.jit(make_eval_step(ctx.objective, False)),
             "_ema": jax.jit(make_eval_step(ctx.objective, True))}

    def run(state, step):
        del step
        if not split:   # data.eval_split = "": evaluation is off
            return {}
        out = {}
        for suffix, fn in steps.items():
            if suffix and "ema" not in state:
                continue
            out.update(evaluate(fn, state, ctx.batches(ctx.source(split)), ctx.mesh, f"eval/{split}{suffix}"))
        return out
    return run
