"""Training objectives: one file a method, all behind the `Objective` interface.

The training loop only ever calls the methods below, so a new method is a new
file here plus one `register` line; train.py does not change.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import numpy as np

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

    def prepare_example(self, example: dict, rng: np.random.Generator) -> dict:
        """Host-side, per training example, after the data transform (numpy): what the method
        draws per image outside jit, e.g. EVA's block-wise patch mask. Deterministic given `rng`.
        Default: unchanged."""
        return example

    def after_update(self, params: Params, extra: Extra, step: jax.Array) -> Extra:
        """Called after each optimizer update (EMA teachers, schedules). Default: no change."""
        return extra

    def evaluate(self, params: Params, extra: Extra, batch: Batch) -> dict[str, jax.Array]:
        """Per-example metrics (name -> (B,)) on an eval batch; averaged by the loop with batch['mask']."""
        return {}

    def load_pretrained(self, params: Params, extra: Extra) -> tuple[Params, Extra]:
        """Called once on a fresh run (never on resume), on the host, after init: e.g. load a
        pre-trained backbone named by config.init_from. Default: unchanged."""
        return params, extra

    def lr_multipliers(self, params: Params) -> Any | None:
        """A tree like `params` of learning-rate factors (0 freezes a leaf; layer-wise decay),
        or None for 1 everywhere. Called on abstract params: use names and shapes only."""
        return None

    def on_eval(self, params: Params, extra: Extra, ctx: "EvalContext") -> dict[str, float]:
        """Extra evaluation at each eval step (k-NN, pictures ...), run on every process;
        returns metrics named "eval/..." for metrics.jsonl. Default: nothing."""
        return {}

    def check_config(self) -> None:
        """Raises ValueError for a bad method config; runs before anything is compiled."""


@dataclasses.dataclass
class EvalContext:
    """What `Objective.on_eval` may use: the run's config, mesh, data and where to write."""
    config: Any
    mesh: jax.sharding.Mesh
    workdir: str
    step: int
    train_source: Any
    eval_source: Any | None
    eval_transform: Callable | None  # deterministic: example -> example
    is_main: bool


_REGISTRY: dict[str, str] = {
    "supervised": "vit_jax.objectives.supervised:Supervised",
    "mae": "vit_jax.objectives.mae:MAEObjective",
    "linear_probe": "vit_jax.evaluate.linear_probe:LinearProbe",
    "knn": "vit_jax.evaluate.knn:KNN",
    "eva": "vit_jax.objectives.eva:EVAObjective",
    "esvit": "vit_jax.objectives.esvit:EsViT",
}


def config_section(config, key: str, defaults):
    """`config.<key>` laid over `defaults` (a ConfigDict): a config without the section gets the
    defaults; a key the method does not know is an error naming the valid ones."""
    section = defaults
    given = config.get(key)
    if given is not None:
        unknown = sorted(set(given.keys()) - set(section.keys()))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config.{key}; valid: {sorted(section.keys())}.")
        for k in given.keys():
            section[k] = given[k]
    return section


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
