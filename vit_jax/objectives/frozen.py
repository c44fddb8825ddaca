"""A frozen backbone that only evaluates (objective "knn"): the run of configs/mnist5k/knn.py.

total_steps = 0; init_from names the run whose backbone is evaluated (none: a random one, the
floor); the evaluators in config.evals (e.g. type "knn") read it through `backbone_variables`.
"""
from __future__ import annotations

from vit_jax import models
from vit_jax.objectives.base import Objective, backbone_kwargs, init_module, require_classes


class FrozenBackbone(Objective):
    """params = the backbone's (no head); extra = its other collections (BatchNorm stats)."""

    def __init__(self, config, info):
        super().__init__(config, info)
        if config.total_steps != 0:
            raise ValueError(f"the {config.objective} objective only evaluates: set total_steps=0")
        require_classes(info, f"the {config.objective} evaluation")
        self.backbone = models.create(config.model_name, **backbone_kwargs(config, info, num_classes=0))

    def init(self, rng, batch):
        return init_module(self.backbone, rng, batch["image"])

    def backbone_variables(self, params, extra):
        return {"params": params, **extra}
