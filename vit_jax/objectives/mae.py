"""MAE pre-training objective (He et al. 2021): the `config.mae` section, loss, eval, pictures.

The model itself (the MAE module, masking, patchify and the masked pixel MSE) is
vit_jax/models/mae.py; this file builds it from a config and plugs it into the training loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vit_jax import models, viz
from vit_jax.data import transforms as transforms_lib
from vit_jax.data.info import DataInfo
from vit_jax.models import layers
from vit_jax.models.mae import (MAE, check_mask_ratio, mae_init, patchify,
                                per_example_masked_loss)
from vit_jax.models.vit import ViT
from vit_jax.objectives.base import Batch, Extra, Objective, Params, backbone_kwargs

Array = jax.Array

EVAL_NOISE_SEED = 0   # evaluation masks come from this constant key: deterministic eval


# Encoder settings that MAE fixes; a config asking for anything else is an error.
_FIXED_ENCODER = dict(num_classes=0, posemb="sincos2d", class_token=True, pool="token", dist_token=False)


def encoder_kwargs(config: mlc.ConfigDict, info: DataInfo) -> dict:
    """ViT overrides for the MAE encoder: the config's, MAE's fixed ones, what the data decides."""
    for k, v in _FIXED_ENCODER.items():
        if k in config.model and config.model[k] != v:
            raise ValueError(f"config.model.{k}={config.model[k]!r} conflicts with MAE's encoder "
                             f"({k}={v!r}); remove config.model.{k}.")
    return backbone_kwargs(config, info, **_FIXED_ENCODER)


class MAEObjective(Objective):
    """MAE pre-training: masked pixel MSE.  params = MAE's tree; params["encoder"] is the backbone.

    Evaluation: the masked loss with one fixed mask (eval_metrics); `reconstruction_image` for the
    "reconstruction" evaluator's pictures."""
    # MAE's ViT-B pre-training defaults
    defaults = dict(mask_ratio=0.75, decoder_width=512, decoder_depth=8, decoder_heads=16,
                    decoder_mlp_ratio=4.0, norm_pix_loss=False)
    backbone_key = ("encoder",)
    # MAE's main_pretrain: timm's add_weight_decay with no skip list, so every array but biases
    # and 1-D tensors is decayed, the class and mask tokens included (timm's rule spares them)
    weight_decay_rule = "dino"

    def __init__(self, config: mlc.ConfigDict, info: DataInfo):
        super().__init__(config, info)
        m = self.cfg
        check_mask_ratio(m.mask_ratio)
        if float(m.decoder_mlp_ratio) <= 0:
            raise ValueError(f"mae.decoder_mlp_ratio={m.decoder_mlp_ratio} must be > 0.")
        self.backbone: ViT = models.create(config.model_name, **encoder_kwargs(config, info))
        if not isinstance(self.backbone, ViT):
            raise ValueError(f"MAE needs a ViT encoder; {config.model_name!r} is a "
                             f"{type(self.backbone).__name__}. Choose a vit_* model_name.")
        self.model = MAE(encoder=self.backbone, decoder_width=int(m.decoder_width),
                         decoder_depth=int(m.decoder_depth), decoder_heads=int(m.decoder_heads),
                         decoder_mlp_ratio=float(m.decoder_mlp_ratio),
                         mask_ratio=float(m.mask_ratio), norm_pix_loss=bool(m.norm_pix_loss))
        # (sizes >= 1, divisibility, visible patches left were checked when MAE was built)
        num_patches = int(np.prod([s // p for s, p in zip(info.image_shape[:2],
                                                          layers.pair(self.backbone.patch_size))]))
        if check_mask_ratio(m.mask_ratio, num_patches) >= num_patches:
            raise ValueError(f"mae.mask_ratio={m.mask_ratio} masks none of the {num_patches} patches: the "
                             "loss (taken on masked patches only) and its gradient would be 0 for the "
                             "whole run. Use e.g. mae.mask_ratio=0.75.")
        self._picture_fn = None

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        rng_params, rng_mask, rng_bias = jax.random.split(rng, 3)
        variables = self.model.init({"params": rng_params, "masking": rng_mask}, batch["image"],
                                    train=False)
        return mae_init(variables["params"], rng_bias), {}

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[Array, tuple[dict[str, Array], Extra]]:
        rng_mask, rng_drop = jax.random.split(rng)
        out = self.model.apply({"params": params}, batch["image"], train=True,
                               rngs={"masking": rng_mask, "dropout": rng_drop})
        return out["loss"], ({"loss": out["loss"]}, extra)

    def _eval_noise(self, images: Array) -> Array:
        gh, gw = self.backbone._check_images(images)
        return jax.random.uniform(jax.random.key(EVAL_NOISE_SEED), (images.shape[0], gh * gw))

    def eval_metrics(self, params: Params, extra: Extra, batch: Batch) -> dict[str, Array]:
        images = batch["image"]
        out = self.model.apply({"params": params}, images, noise=self._eval_noise(images),
                               train=False)
        target = patchify(images, self.model.patch_size)
        return {"loss": per_example_masked_loss(out["pred"], target, out["mask"],
                                                self.model.norm_pix_loss)}

    def reconstruction_image(self, params: Params, extra: Extra, images: np.ndarray) -> np.ndarray:
        """The reconstruction grid (uint8) of (B, H, W, C) eval images with the fixed eval mask:
        per image, the original, the masked input, the reconstruction and it pasted into the visible
        patches. Host-side."""
        if self._picture_fn is None:
            self._picture_fn = jax.jit(lambda p, x, n: self.model.apply({"params": p}, x, noise=n))
        x = jnp.asarray(images)
        out = jax.device_get(self._picture_fn(params, x, self._eval_noise(x)))
        mean, std = transforms_lib.normalization_stats(self.config.data.eval_transform)
        return viz.mae_grid(np.asarray(images), out["pred"], out["mask"], self.model.patch_size,
                            mean, std, self.model.norm_pix_loss)
