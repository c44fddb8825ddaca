"""Training objectives: one file a method, all behind the `Objective` interface.

The training loop only ever calls the five methods below, so a new method is a new
file here plus one `register` line; train.py does not change.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import jax

from vit_jax.data.info import DataInfo

Params = Any
Extra = Any  # non-trainable method state: BatchNorm statistics, EMA teachers, centers ...
Batch = dict[str, jax.Array]


class Objective:
    """A method: its modules, how to initialise them, and its loss.

    Attributes:
        name: the name used in `config.objective`.
        model: the backbone (a flax module) whose parameters live under params["backbone"]
            or are the whole params tree; evaluation protocols read it.
    """
    name = "objective"

    def __init__(self, config, info: DataInfo):
        self.config, self.info = config, info

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        """Initial (params, extra) from one example batch of shape (1, ...)."""
        raise NotImplementedError

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array,
                      step: jax.Array) -> tuple[jax.Array, tuple[dict[str, jax.Array], Extra]]:
        """Scalar loss to minimise and (metrics dict of scalars, updated extra). Pure; runs in jit."""
        raise NotImplementedError

    def after_update(self, params: Params, extra: Extra, step: jax.Array) -> Extra:
        """Called after each optimizer update (EMA teachers, schedules). Default: no change."""
        return extra

    def evaluate(self, params: Params, extra: Extra, batch: Batch) -> dict[str, jax.Array]:
        """Per-example metrics (name -> (B,)) on an eval batch; averaged by the loop with batch['mask']."""
        return {}

    def check_config(self) -> None:
        """Raises ValueError for a bad method config; runs before anything is compiled."""


_REGISTRY: dict[str, str] = {
        "supervised": "vit_jax.objectives.supervised:Supervised",
}


def register(name: str, target: str | Callable[..., Objective]) -> None:
    """Adds a method: `target` is a class or a "module:Class" string (imported lazily)."""
    _REGISTRY[name] = target


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(config, info: DataInfo) -> Objective:
    name = config.objective
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; choose one of {names()} "
                                          "(--config.objective=NAME)")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
    return target(config, info)
