"""Evaluators named in the config, as big_vision does:

    config.evals.test = dict(type="metrics")                          # eval/test/accuracy ...
    config.evals.knn = dict(type="knn", ks=(10, 20), every_epochs=5)  # eval/knn/top1_k10 ...

Each entry has a `type` from TYPES, the type's own keys (its DEFAULTS) and optionally a
duration (every_steps | every_epochs | every_examples; default: config.eval_every). Every
evaluator also runs after the last step, and a total_steps = 0 run evaluates once at step 0.
A new type is one module with DEFAULTS, check(name, spec) and make(name, spec, ctx) plus one
line here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections as mlc

from vit_jax import durations
from vit_jax.evaluate import knn, metrics, pictures
from vit_jax.evaluate.context import EvalContext

Run = Callable[[dict, int], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class EvalType:
    defaults: dict
    check: Callable[[str, Any], None]
    make: Callable[[str, Any, EvalContext], Run]
    # the objective methods the type calls, or a function of the checked spec naming them (or None)
    needs: str | tuple[str, ...] | Callable[[Any], str | tuple[str, ...] | None] | None = None


TYPES: dict[str, EvalType] = {
    "metrics": EvalType(metrics.DEFAULTS, metrics.check, metrics.make),
    "knn": EvalType(knn.DEFAULTS, knn.check, knn.make, knn.needs),
    "reconstruction": EvalType(pictures.RECONSTRUCTION, pictures.check, pictures.make_reconstruction,
                               pictures.NEEDS["reconstruction"]),
    "correspondences": EvalType(pictures.CORRESPONDENCES, pictures.check, pictures.make_correspondences,
                                pictures.correspondence_needs),
}
_EVERY = tuple(durations.placeholders("every"))


@dataclasses.dataclass
class Evaluator:
    name: str
    kind: EvalType
    spec: mlc.ConfigDict  # the type's keys, checked, defaults filled in
    every: int            # steps between runs; 0: only at the end
    run: Run | None = None


def _spec(name: str, raw: Any, objective: Any) -> tuple[EvalType, mlc.ConfigDict]:
    if not hasattr(raw, "get") or "type" not in raw:
        raise ValueError(f"evals.{name} needs a type: one of {sorted(TYPES)}, e.g. "
                         f"--config.evals.{name}.type=metrics")
    kind = raw["type"]
    if kind not in TYPES:
        raise ValueError(f"evals.{name}.type={kind!r} is unknown; choose one of {sorted(TYPES)}")
    t = TYPES[kind]
    spec = mlc.ConfigDict(dict(t.defaults))
    unknown = sorted(set(raw.keys()) - set(spec.keys()) - {"type"} - set(_EVERY))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in evals.{name} ({kind}); valid: "
                         f"{sorted(set(spec.keys()) | set(_EVERY))}")
    for k in spec.keys():
        if k in raw and raw[k] is not None:
            spec[k] = raw[k]
    t.check(name, spec)
    needs = t.needs(spec) if callable(t.needs) else t.needs
    for method in (needs,) if isinstance(needs, str) else needs or ():
        if not callable(getattr(objective, method, None)):
            raise ValueError(f"evals.{name} ({kind}) reads objective.{method}, which the "
                             f"{type(objective).__name__} objective does not have; remove evals.{name}")
    return t, spec


def plan(config: Any, objective: Any, num_train: int, eval_every: int,
         note: Callable[[str], None] = print) -> list[Evaluator]:
    """The evaluators of `config.evals`, checked (types, keys, what they need of the objective)
    and with their intervals in steps; nothing is built or compiled. Raises ValueError."""
    out = []
    for name, raw in sorted((config.get("evals") or {}).items()):
        kind, spec = _spec(name, raw, objective)
        every = durations.resolve(raw, "every", num_train, config.batch_size, eval_every,
                                  f"evals.{name}", note, durations.drop_remainder(config))
        out.append(Evaluator(name, kind, spec, every))
    return out


def build(ctx: EvalContext, planned: list[Evaluator]) -> list[Evaluator]:
    """`planned` with their run functions (jitted lazily: the first call compiles)."""
    return [dataclasses.replace(ev, run=ev.kind.make(ev.name, ev.spec, ctx)) for ev in planned]
