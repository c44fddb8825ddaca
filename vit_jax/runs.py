"""A finished (or running) vit_jax run as Python objects: its config, method and weights.

    run = load_run("workdirs/quickstart")
    logits, aux = run.model.apply(run.variables, images)     # images as the run's eval_transform makes them

For notebooks, teachers (workdir:PATH), init_from and anything that wants to use a trained
network without repeating its config: the objective is rebuilt from the run's config.json
(validated as a new run would be, after `upgrade_config` has brought an older config.json up to
today's keys), the weights are read from its latest checkpoint on any topology.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections as mlc
import numpy as np

from vit_jax import checkpoint, models
from vit_jax import validate as validate_lib
from vit_jax.config_base import base_config, read_config_json
from vit_jax.data import sources


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
        """The run's network, `objective.backbone` (a supervised run's includes its head)."""
        return self.objective.backbone

    @property
    def backbone_variables(self) -> dict:
        """The variables of `model` as the objective declares them: a supervised run's trained
        params, an MAE / EVA encoder's, a DINO / EsViT run's EMA teacher's."""
        return self.objective.backbone_variables(self.params, self.extra)

    @property
    def variables(self) -> dict:
        """`backbone_variables`, for `run.model.apply(run.variables, images)`."""
        return self.backbone_variables

    def source(self, split: str | None = None):
        """The run's data (config.data.name) for `split`: by default its eval split, else train."""
        data = self.config.data
        return sources.get_source(data.name, split or data.eval_split or data.train_split,
                                  **validate_lib.source_kwargs(data))

    def predict(self, examples: list[dict]) -> np.ndarray:
        """Class probabilities (B, K) of raw examples, for a run whose network classifies: a
        supervised (fine-tuning) run, or a DeiT student (its heads' average)."""
        classifies = self.config.objective in ("supervised", "distill")
        if not classifies or int(getattr(self.model, "num_classes", 0) or 0) <= 0:
            raise ValueError(f"{self.workdir} is a {self.config.objective!r} run; predict needs a "
                             "supervised one (train or fine-tune a classifier first).")
        logits, _ = self.model.apply(self.variables, self.images(examples))
        return np.asarray(jax.nn.softmax(logits, axis=-1))

    def images(self, examples: list[dict]) -> np.ndarray:
        """Raw examples (uint8 images) -> the (B, H, W, C) float32 batch the model expects."""
        return np.stack([np.asarray(self.eval_transform(dict(e))["image"]) for e in examples])


def upgrade_config(values: dict) -> tuple[dict, list[str]]:
    """A config.json dict written by an older vit_jax, brought up to today's keys, and notes of
    what changed: renamed model fields, the k-NN settings that became evaluators, the probe's
    freezing that became optim.freeze."""
    values = json.loads(json.dumps(values))  # a deep copy
    notes: list[str] = []
    model, renamed = models.upgrade_fields(values.get("model") or {})
    if renamed:
        values["model"] = model
        notes += [f"model.{r}" for r in renamed]
    had_evals = "evals" in values
    evals = values.setdefault("evals", {})
    objective = values.get("objective")
    if objective == "knn" and isinstance(values.get("knn"), dict):
        knn = values.pop("knn")
        evals["knn"] = dict(type="knn", **{k: knn[k] for k in ("ks", "temperature") if k in knn})
        notes.append("knn.{ks,temperature} -> evals.knn")
    else:
        values.pop("knn", None)
    esvit = values.get("esvit")
    if isinstance(esvit, dict) and ("knn_k" in esvit or "knn_temperature" in esvit):
        ks, t = esvit.pop("knn_k", (10, 20)), esvit.pop("knn_temperature", 0.07)
        if objective == "esvit":
            evals.setdefault("knn", dict(type="knn", ks=ks, temperature=t))
            evals.setdefault("esvit_correspondence", dict(type="correspondences"))
        notes.append("esvit.knn_k/knn_temperature -> evals.knn")
    if not had_evals and not evals:
        values.pop("evals")
    optim = values.get("optim") or {}
    if objective == "linear_probe" and not optim.get("freeze"):
        optim["freeze"] = "backbone/"
        notes.append("optim.freeze = 'backbone/' (the probe's frozen backbone)")
    return values, notes


def _overlay(base: mlc.ConfigDict, values: dict) -> None:
    for k, v in values.items():
        merge = k in base and isinstance(base[k], mlc.ConfigDict) and k not in ("model", "evals")
        if isinstance(v, dict) and merge:
            _overlay(base[k], v)
        else:
            base[k] = mlc.ConfigDict(v) if isinstance(v, dict) else v


def load_config(workdir: str) -> mlc.ConfigDict:
    """A run's config.json (upgraded, see upgrade_config) laid over today's defaults, so keys
    added since the run take their default."""
    path = os.path.join(workdir, "config.json")
    values, notes = upgrade_config(read_config_json(path))
    if notes and jax.process_index() == 0:
        print(f"note: {path} is from an older vit_jax; read with: {'; '.join(notes)}", flush=True)
    config = base_config()
    _overlay(config, values)
    return config


def workdir_of(path: str) -> str:
    """A run's workdir from the workdir or its checkpoints/ directory."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.basename(path) == "checkpoints" and os.path.isfile(os.path.join(parent, "config.json")):
        return parent
    return path


def load_run(workdir: str, step: int | None = None) -> Run:
    """The run in `workdir` (or its checkpoints/; see the module docstring). Raises
    ConfigError without a readable config.json, FileNotFoundError without a checkpoint,
    CorruptCheckpointError for an unreadable one."""
    workdir = workdir_of(workdir)
    config = load_config(workdir)
    plan = validate_lib.validate(config)
    params = jax.device_get(checkpoint.load_params(workdir, step))
    try:
        extra = jax.device_get(checkpoint.load_params(workdir, step, path=("extra",)))
    except KeyError:
        extra = {}
    return Run(workdir, config, plan.objective, params, extra, plan.eval_transform)
