"""Supervised classification: softmax cross-entropy with label smoothing and mixup/cutmix."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vit_jax import models, optim
from vit_jax.data import mixup as mixup_lib
from vit_jax.objectives import Objective, register


def backbone_kwargs(config, info, **fixed) -> dict:
    """Model overrides: the config's, plus what the data decides (classes, size, channels),
    plus `fixed` (what the method decides, e.g. num_classes=0 for a feature extractor)."""
    kw = dict(config.model)
    kw.update(fixed)
    kw.setdefault("num_classes", info.num_classes)
    kw.setdefault("image_size", info.image_shape[:2])
    kw.setdefault("in_channels", info.image_shape[2])
    if config.dtype != "float32":
        kw.setdefault("dtype", jnp.dtype(config.dtype))
    return kw


class Supervised(Objective):
    name = "supervised"

    def __init__(self, config, info):
        super().__init__(config, info)
        self.model = models.create(config.model_name, **backbone_kwargs(config, info))
        self.num_classes = info.num_classes

    def check_config(self) -> None:
        s = self.config.supervised
        if not 0.0 <= s.label_smoothing < 1.0:
            raise ValueError(f"supervised.label_smoothing={s.label_smoothing} must be in [0, 1)")
        if s.mixup_alpha < 0 or s.cutmix_alpha < 0:
            raise ValueError("supervised.mixup_alpha and supervised.cutmix_alpha must be >= 0 (0 turns them off)")
        if not 0.0 <= s.mix_prob <= 1.0:
            raise ValueError(f"supervised.mix_prob={s.mix_prob} must be in [0, 1]")
        if self.num_classes <= 0:
            raise ValueError("the supervised objective needs a labelled dataset with num_classes > 0")
        if self.config.optim.layer_decay < 1.0 and not hasattr(self.model, "depth"):
            raise ValueError(f"optim.layer_decay uses ViT layer ids; {type(self.model).__name__} has "
                             "no flat block list yet: set optim.layer_decay=1.0")

    def load_pretrained(self, params, extra):
        if not self.config.init_from:
            return params, extra
        from vit_jax.evaluate import backbone
        return backbone.load_backbone(self.config.init_from, params), extra

    def lr_multipliers(self, params):
        decay = self.config.optim.layer_decay
        if decay >= 1.0:
            return None
        return optim.layer_decay_multipliers(params, self.model.depth, decay)

    def init(self, rng, batch):
        variables = self.model.init({"params": rng}, batch["image"], train=False)
        params = variables.pop("params")
        return params, dict(variables)

    def _apply(self, params, extra, images, train, rng=None):
        variables = {"params": params, **extra}
        rngs = {"dropout": rng} if rng is not None else {}
        if train and extra:  # e.g. BatchNorm statistics
            (out, aux), new = self.model.apply(variables, images, train=True, rngs=rngs, mutable=list(extra))
            return out, aux, dict(new)
        out, aux = self.model.apply(variables, images, train=train, rngs=rngs)
        return out, aux, extra

    def loss(self, params, extra, batch, rng, step):
        s = self.config.supervised
        rng_mix, rng_drop = jax.random.split(rng)
        images = batch["image"]
        targets = mixup_lib.one_hot_smooth(batch["label"], self.num_classes, s.label_smoothing)
        if s.mixup_alpha > 0 or s.cutmix_alpha > 0:
            images, targets = mixup_lib.mixup_cutmix(rng_mix, images, targets, s.mixup_alpha,
                                                                                              s.cutmix_alpha, prob=s.mix_prob)
        logits, _, extra = self._apply(params, extra, images, True, rng_drop)
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"loss": loss, "accuracy": accuracy}, extra)

    def evaluate(self, params, extra, batch):
        logits, _, _ = self._apply(params, extra, batch["image"], False)
        logits = logits.astype(jnp.float32)
        labels = batch["label"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], -1)
        return {"loss": loss, "accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
                        "top5": top5.astype(jnp.float32)}


register("supervised", Supervised)
