"""A finished (or running) vit_jax run as Python objects: its config, method and weights.

    run = load_run("workdirs/quickstart")
    logits, aux = run.model.apply(run.variables, images)     # images as the run's eval_transform makes them

For notebooks, teachers (workdir:PATH) and anything that wants to use a trained network without
repeating its config: the objective is rebuilt from the run's config.json (validated as a new run
would be), the weights are read from its latest checkpoint on any topology.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections as mlc
import numpy as np

from vit_jax import checkpoint


@dataclasses.dataclass
class Run:
    workdir: str
    config: mlc.ConfigDict
    objective: Any                 # vit_jax.objectives.Objective
    params: Any                    # the run's trained params (host arrays)
    extra: Any                     # non-trained state (BatchNorm statistics, teachers, centers)
    eval_transform: Callable[[dict], dict] | None

    @property
    def model(self):
        """The network a supervised / probe run trains, or a pre-training method's backbone."""
        return getattr(self.objective, "backbone", None) or self.objective.model

    @property
    def variables(self) -> dict:
        """{"params": ...[, "batch_stats": ...]} for `run.model.apply` (supervised runs); a
        pre-training run's backbone: `backbone_variables`."""
        stats = {k: v for k, v in (self.extra or {}).items() if k == "batch_stats"}
        return {"params": self.params, **stats}

    @property
    def backbone_variables(self) -> dict:
        """{"params": ...} of the backbone a downstream task starts from: the EMA teacher's of a
        DINO/EsViT run (as evaluate.backbone.run_params), else the trained params' backbone."""
        from vit_jax.evaluate.backbone import backbone_of
        teacher = (self.extra or {}).get("ema_teacher")
        return {"params": backbone_of(teacher["params"] if teacher else self.params)}

    def source(self, split: str | None = None):
        """The run's data (config.data.name) for `split`: by default its eval split, else train."""
        from vit_jax import validate
        from vit_jax.data import sources
        data = self.config.data
        return sources.get_source(data.name, split or data.eval_split or data.train_split,
                                  **validate.source_kwargs(data))

    def predict(self, examples: list[dict]) -> np.ndarray:
        """Class probabilities (B, K) of raw examples, for a supervised (fine-tuning) run."""
        if self.config.objective != "supervised":
            raise ValueError(f"{self.workdir} is a {self.config.objective!r} run; predict needs a "
                             "supervised one (train or fine-tune a classifier first).")
        logits, _ = self.model.apply(self.variables, self.images(examples))
        return np.asarray(jax.nn.softmax(logits, axis=-1))

    def images(self, examples: list[dict]) -> np.ndarray:
        """Raw examples (uint8 images) -> the (B, H, W, C) float32 batch the model expects."""
        return np.stack([np.asarray(self.eval_transform(dict(e))["image"]) for e in examples])


def _overlay(base: mlc.ConfigDict, values: dict) -> None:
    for k, v in values.items():
        if isinstance(v, dict) and k in base and isinstance(base[k], mlc.ConfigDict) and k != "model":
            _overlay(base[k], v)
        else:
            base[k] = mlc.ConfigDict(v) if isinstance(v, dict) else v


def load_config(workdir: str) -> mlc.ConfigDict:
    """A run's config.json laid over today's defaults (keys added since the run take their default)."""
    from vit_jax.config_base import base_config
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} is not a vit_jax workdir (no config.json).")
    with open(path) as f:
        values = json.load(f)
    config = base_config()
    _overlay(config, values)
    return config


def load_run(workdir: str, step: int | None = None) -> Run:
    """The run in `workdir` (see the module docstring). Raises FileNotFoundError without a config
    or checkpoint, CorruptCheckpointError for an unreadable one."""
    from vit_jax import validate
    config = load_config(workdir)
    plan = validate.validate(config)
    params = jax.device_get(checkpoint.load_params(workdir, step))
    try:
        extra = jax.device_get(checkpoint.load_params(workdir, step, path=("extra",)))
    except KeyError:
        extra = {}
    return Run(workdir, config, plan.objective, params, extra, plan.eval_transform)
