"""Supervised classification: softmax cross-entropy with label smoothing and mixup/cutmix."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vit_jax import durations, models
from vit_jax.data import mixup as mixup_lib
from vit_jax.objectives.base import Objective, apply_module, backbone_kwargs, init_module, require_classes


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example loss, accuracy and top-5 of (B, K) logits against (B,) integer labels."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], -1)
    return {"loss": loss, "accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            "top5": top5.astype(jnp.float32)}


class Supervised(Objective):
    """params = the backbone's (with its head); extra = its other collections (BatchNorm stats)."""
    # mixup_off_*: mixing stops after this many steps | epochs | examples (CCT's mixup_off_epoch)
    defaults = dict(label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0,
                    **durations.placeholders("mixup_off"))

    def __init__(self, config, info):
        super().__init__(config, info)
        s = self.cfg
        if not 0.0 <= s.label_smoothing < 1.0:
            raise ValueError(f"supervised.label_smoothing={s.label_smoothing} must be in [0, 1)")
        if s.mixup_alpha < 0 or s.cutmix_alpha < 0:
            raise ValueError("supervised.mixup_alpha and supervised.cutmix_alpha must be >= 0 (0 turns them off)")
        if not 0.0 <= s.mix_prob <= 1.0:
            raise ValueError(f"supervised.mix_prob={s.mix_prob} must be in [0, 1]")
        # None: mixing throughout
        self.mix_steps = durations.resolve(s, "mixup_off", info.num_train, config.batch_size,
                                           where="supervised", drop=durations.drop_remainder(config))
        require_classes(info, "the supervised objective")
        self.backbone = models.create(config.model_name, **backbone_kwargs(config, info))
        self.num_classes = info.num_classes

    def backbone_variables(self, params, extra):
        return {"params": params, **extra}

    def init(self, rng, batch):
        return init_module(self.backbone, rng, batch["image"])

    def loss(self, params, extra, batch, rng, step):
        s = self.cfg
        rng_mix, rng_drop = jax.random.split(rng)
        images = batch["image"]
        targets = mixup_lib.one_hot_smooth(batch["label"], self.num_classes, s.label_smoothing)
        if s.mixup_alpha > 0 or s.cutmix_alpha > 0:
            prob = s.mix_prob if self.mix_steps is None else jnp.where(step < self.mix_steps, s.mix_prob, 0.0)
            images, targets = mixup_lib.mixup_cutmix(rng_mix, images, targets, s.mixup_alpha,
                                                     s.cutmix_alpha, prob=prob, groups=self.batch_shards)
        logits, _, extra = apply_module(self.backbone, params, extra, images, True, rng_drop)
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"loss": loss, "accuracy": accuracy}, extra)

    def eval_metrics(self, params, extra, batch):
        logits, _, _ = apply_module(self.backbone, params, extra, batch["image"], False)
        return classification_metrics(logits, batch["label"])
