"""Durations given in steps, epochs or examples, resolved to steps in this one place.

A duration NAME has up to three keys in its config section, one per unit:

    total             total_steps | num_epochs | total_examples        (config)
    warmup            warmup_steps | warmup_epochs | warmup_examples    (config.optim)
    cooldown          cooldown_steps | cooldown_epochs | cooldown_examples (config.optim)
    mixup_off         mixup_off_steps | mixup_off_epochs | mixup_off_examples (config.supervised)
    eval_every        eval_every | eval_every_epochs | eval_every_examples
    checkpoint_every  checkpoint_every | checkpoint_every_epochs | checkpoint_every_examples
    an evaluator's    every_steps | every_epochs | every_examples       (config.evals.NAME)

A key that is None (or -1 for total_steps, its old "unset" value) is not given. When several
units are given, steps win over examples over epochs and a note says which was used, so a
`--config.eval_every=10` on the command line overrides a config file's `eval_every_epochs`.
An epoch is num_train / batch_size steps, or floor(num_train / batch_size) with
data.drop_remainder (DINO's loader drops the last partial batch of each epoch; the pipeline then
starts every epoch on a fresh permutation); a count converts with Python's round().
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections as mlc


@dataclasses.dataclass(frozen=True)
class Keys:
    steps: str
    epochs: str
    examples: str


DURATIONS: dict[str, Keys] = {
    "total": Keys("total_steps", "num_epochs", "total_examples"),
    "warmup": Keys("warmup_steps", "warmup_epochs", "warmup_examples"),
    "cooldown": Keys("cooldown_steps", "cooldown_epochs", "cooldown_examples"),
    "mixup_off": Keys("mixup_off_steps", "mixup_off_epochs", "mixup_off_examples"),
    "eval_every": Keys("eval_every", "eval_every_epochs", "eval_every_examples"),
    "checkpoint_every": Keys("checkpoint_every", "checkpoint_every_epochs", "checkpoint_every_examples"),
    "every": Keys("every_steps", "every_epochs", "every_examples"),
}

# The resolved value when no unit is given.
DEFAULT_STEPS = {"warmup": 0, "cooldown": 0, "eval_every": 500, "checkpoint_every": 500}
DEFAULT_EPOCHS = 10.0   # a run that gives no total


def placeholders(name: str) -> dict[str, Any]:
    """The keys of duration `name` as unset ConfigDict fields (typed, so the CLI can set them)."""
    k = DURATIONS[name]
    return {k.steps: mlc.config_dict.placeholder(int), k.epochs: mlc.config_dict.placeholder(float),
            k.examples: mlc.config_dict.placeholder(int)}


def _given(section: Any, key: str) -> Any:
    value = section.get(key) if hasattr(section, "get") else None
    if value is None or (key == "total_steps" and value == -1):
        return None
    return value


def drop_remainder(config: Any) -> bool:
    """config.data.drop_remainder (False when absent)."""
    data = config.get("data") if hasattr(config, "get") else None
    return bool(data.get("drop_remainder", False)) if data is not None else False


def steps_per_epoch(num_train: int, batch_size: int, drop: bool = False) -> float:
    """num_train / batch_size, or floor of it (at least 1) when the last partial batch is dropped."""
    if drop:
        return float(max(num_train // batch_size, 1))
    return num_train / batch_size


def resolve(section: Any, name: str, num_train: int, batch_size: int,
            default: int | None = None, where: str = "", note: Callable[[str], None] = print,
            drop: bool = False) -> int | None:
    """Steps of duration `name` in `section` (a ConfigDict or dict); `default` when no unit is
    given. Raises ValueError for a negative or non-numeric value, naming the key."""
    k = DURATIONS[name]
    prefix = f"{where}." if where else ""
    given = [(key, _given(section, key)) for key in (k.steps, k.examples, k.epochs)]
    given = [(key, v) for key, v in given if v is not None]
    if not given:
        return default
    key, value = given[0]
    if len(given) > 1:
        others = ", ".join(f"{prefix}{o}={v}" for o, v in given[1:])
        note(f"note: {prefix}{key}={value} is used; {others} ignored (one unit per duration).")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{prefix}{key}={value!r} must be a number") from None
    if value < 0:
        raise ValueError(f"{prefix}{key}={value} must be >= 0")
    if key == k.steps:
        return int(value)
    if key == k.examples:
        return int(round(value / batch_size))
    return int(round(value * steps_per_epoch(num_train, batch_size, drop)))


def total_steps(config: Any, num_train: int) -> int:
    """Training steps of a run: total_steps, total_examples or num_epochs (at least 1 when
    counted from epochs or examples; total_steps = 0 evaluates only)."""
    k = DURATIONS["total"]
    if _given(config, k.steps) is not None:
        return int(config[k.steps])
    drop = drop_remainder(config)
    steps = resolve(config, "total", num_train, config.batch_size, drop=drop)
    if steps is None:
        steps = int(round(DEFAULT_EPOCHS * steps_per_epoch(num_train, config.batch_size, drop)))
    return max(1, steps)


def all_steps(config: Any, num_train: int, note: Callable[[str], None] = print) -> dict[str, int]:
    """Every run-level duration of `config` in steps: total, warmup, cooldown, eval_every,
    checkpoint_every."""
    b, drop = config.batch_size, drop_remainder(config)
    out = {"total": total_steps(config, num_train)}
    for name in ("warmup", "cooldown"):
        out[name] = resolve(config.optim, name, num_train, b, DEFAULT_STEPS[name], "optim", note, drop)
    for name in ("eval_every", "checkpoint_every"):
        out[name] = resolve(config, name, num_train, b, DEFAULT_STEPS[name], note=note, drop=drop)
    return out
