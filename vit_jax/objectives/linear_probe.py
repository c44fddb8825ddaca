"""Linear probe (MAE's protocol): a frozen backbone, then BatchNorm without affine and a linear head.

The backbone runs in inference mode under stop_gradient and optim.freeze must cover it
(configs set optim.freeze = "backbone/"), so only the head learns. MAE trains the probe with
LARS (optim.name="lars", momentum 0.9, trust 0.001, no weight decay) on the class token; the
head's kernel starts from N(0, 0.01).

    python -m vit_jax.main --config configs/mnist5k/linear_probe.py:WORKDIR_OF_PRETRAINING --workdir DIR
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vit_jax import models
from vit_jax.objectives.base import Objective, backbone_kwargs, init_module, require_classes


class ProbeHead(nn.Module):
    """(B, D) features -> (B, K) logits through BatchNorm(affine=False, eps 1e-6) and Dense."""
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                         epsilon=1e-6, momentum=0.9, name="bn")(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="linear")(x)


class LinearProbe(Objective):
    """params = {"backbone", "head"}; extra = {"backbone": its collections, "head": {"batch_stats"}}."""
    backbone_key = ("backbone",)

    def __init__(self, config, info):
        super().__init__(config, info)
        require_classes(info, "the linear probe")
        freeze = config.optim.freeze
        if not freeze or not re.match(freeze, "backbone/") or re.match(freeze, "head/"):
            raise ValueError(f"optim.freeze={freeze!r}: the linear probe trains its head only; "
                             "set --config.optim.freeze=backbone/")
        self.backbone = models.create(config.model_name, **backbone_kwargs(config, info, num_classes=0))
        self.head = ProbeHead(info.num_classes)

    def backbone_variables(self, params, extra):
        return {"params": params["backbone"], **extra["backbone"]}

    def init(self, rng, batch):
        r1, r2 = jax.random.split(rng)
        bb, stats = init_module(self.backbone, r1, batch["image"])
        feats, _ = self.backbone.apply({"params": bb, **stats}, batch["image"], train=False)
        head = self.head.init({"params": r2}, feats, train=False)
        extra = {"backbone": stats, "head": {"batch_stats": head["batch_stats"]}}
        return {"backbone": bb, "head": head["params"]}, extra

    def _features(self, params, extra, images):
        feats, _ = self.backbone.apply(self.backbone_variables(params, extra), images, train=False)
        return jax.lax.stop_gradient(feats.astype(jnp.float32))

    def loss(self, params, extra, batch, rng, step):
        feats = self._features(params, extra, batch["image"])
        logits, new = self.head.apply({"params": params["head"], **extra["head"]}, feats, train=True,
                                      mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"loss": loss, "accuracy": accuracy}, dict(extra, head=dict(new)))

    def eval_metrics(self, params, extra, batch):
        feats = self._features(params, extra, batch["image"])
        logits = self.head.apply({"params": params["head"], **extra["head"]}, feats, train=False)
        labels = batch["label"]
        return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                "accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32)}
