"""Training objectives: one file a method, all behind the `Objective` interface (base.py).

The registry below is the one place a method is named: a new method is a new file here plus
one line in `REGISTRY`; its config section is config.<name>, laid over the class's `defaults`.
Files are imported when their method is built, so a broken method never breaks the others.
"""
from __future__ import annotations

import copy
import importlib

import ml_collections as mlc

from vit_jax.data.info import DataInfo
from vit_jax.objectives.base import (Batch, Extra, Metrics, Objective, Params, backbone_kwargs,
                                     section, subtree)

REGISTRY: dict[str, str] = {
    "supervised": "vit_jax.objectives.supervised:Supervised",
    "mae": "vit_jax.objectives.mae:MAEObjective",
    "eva": "vit_jax.objectives.eva:EVAObjective",
    "esvit": "vit_jax.objectives.esvit:EsViT",
    "distill": "vit_jax.objectives.distill:Distill",
    "linear_probe": "vit_jax.objectives.linear_probe:LinearProbe",
    "knn": "vit_jax.objectives.frozen:FrozenBackbone",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get_class(name: str) -> type[Objective]:
    """The Objective class registered as `name`; ValueError naming the choices otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}; choose one of {names()} (--config.objective=NAME)")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def default_config(name: str) -> mlc.ConfigDict:
    """The config section of method `name` with its defaults: `c.NAME = default_config("NAME")`."""
    # a deep copy: placeholders (FieldReferences) must not be shared between configs
    return mlc.ConfigDict(copy.deepcopy(dict(get_class(name).defaults)))


def build(config: mlc.ConfigDict, info: DataInfo) -> Objective:
    return get_class(config.objective)(config, info)


__all__ = ["Batch", "Extra", "Metrics", "Objective", "Params", "REGISTRY", "backbone_kwargs",
           "build", "default_config", "get_class", "names", "section", "subtree"]
