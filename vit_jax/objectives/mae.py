"""MAE pre-training objective (He et al. 2021): the `config.mae` section, loss, eval, pictures.

The model itself (the MAE module, masking, patchify and the masked pixel MSE) is
vit_jax/models/mae.py; this file builds it from a config and plugs it into the training loop.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vit_jax import models, viz
from vit_jax.data import transforms as transforms_lib
from vit_jax.data.info import DataInfo
from vit_jax.models.mae import (MAE, check_mask_ratio, mae_qkv_init, patchify,
                                per_example_masked_loss)
from vit_jax.models.vit import ViT
from vit_jax.objectives import Batch, Extra, Objective, Params, config_section, register

Array = jax.Array

EVAL_NOISE_SEED = 0   # evaluation masks come from this constant key: deterministic eval


def default_config() -> mlc.ConfigDict:
    """The `config.mae` section, with MAE's ViT-B pre-training defaults."""
    return mlc.ConfigDict(dict(
        mask_ratio=0.75,
        decoder_width=512,
        decoder_depth=8,
        decoder_heads=16,
        decoder_mlp_ratio=4.0,
        norm_pix_loss=False,
    ))


# Encoder settings that MAE fixes; a config asking for anything else is an error.
_FIXED_ENCODER = dict(num_classes=0, posemb="sincos2d", class_token=True, pool="token")


def encoder_kwargs(config: mlc.ConfigDict, info: DataInfo) -> dict:
    """ViT overrides for the MAE encoder: the config's, what the data decides, MAE's fixed ones."""
    kw = dict(config.model)
    for k, v in _FIXED_ENCODER.items():
        if k in kw and kw[k] != v:
            raise ValueError(f"config.model.{k}={kw[k]!r} conflicts with MAE's encoder ({k}={v!r}); "
                             f"remove config.model.{k}.")
        kw[k] = v
    kw.setdefault("image_size", tuple(info.image_shape[:2]))
    kw.setdefault("in_channels", info.image_shape[2])
    if config.dtype != "float32":
        kw.setdefault("dtype", jnp.dtype(config.dtype))
    return kw


class MAEObjective(Objective):
    """MAE pre-training: masked pixel MSE.  params = MAE's tree; params["encoder"] is the backbone."""
    name = "mae"

    def __init__(self, config: mlc.ConfigDict, info: DataInfo):
        super().__init__(config, info)
        self.mae_config = config_section(config, "mae", default_config())
        m = self.mae_config
        self.backbone: ViT = models.create(config.model_name, **encoder_kwargs(config, info))
        if not isinstance(self.backbone, ViT):
            raise ValueError(f"MAE needs a ViT encoder; {config.model_name!r} is a "
                             f"{type(self.backbone).__name__}. Choose a vit_* model_name.")
        self.model = MAE(encoder=self.backbone, decoder_width=int(m.decoder_width),
                         decoder_depth=int(m.decoder_depth), decoder_heads=int(m.decoder_heads),
                         decoder_mlp_ratio=float(m.decoder_mlp_ratio),
                         mask_ratio=float(m.mask_ratio), norm_pix_loss=bool(m.norm_pix_loss))
        self._picture_fn = None

    # ------------------------------------------------------------------ interface
    def check_config(self) -> None:
        m = self.mae_config
        check_mask_ratio(m.mask_ratio)  # (ConfigDict already keeps the sizes ints)
        if float(m.decoder_mlp_ratio) <= 0:
            raise ValueError(f"mae.decoder_mlp_ratio={m.decoder_mlp_ratio} must be > 0.")
        # The rest (sizes >= 1, divisibility, visible patches left) was checked when MAE was built.

    def backbone_params(self, params: Params) -> Params:
        """The encoder's params: `self.backbone.apply({"params": backbone_params(p)}, images)`."""
        return params["encoder"]

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        rng_params, rng_mask = jax.random.split(rng)
        variables = self.model.init({"params": rng_params, "masking": rng_mask}, batch["image"],
                                    train=False)
        return mae_qkv_init(variables["params"]), {}

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[Array, tuple[dict[str, Array], Extra]]:
        rng_mask, rng_drop = jax.random.split(rng)
        out = self.model.apply({"params": params}, batch["image"], train=True,
                               rngs={"masking": rng_mask, "dropout": rng_drop})
        return out["loss"], ({"loss": out["loss"]}, extra)

    def _eval_noise(self, images: Array) -> Array:
        gh, gw = self.backbone._check_images(images)
        return jax.random.uniform(jax.random.key(EVAL_NOISE_SEED), (images.shape[0], gh * gw))

    def evaluate(self, params: Params, extra: Extra, batch: Batch) -> dict[str, Array]:
        images = batch["image"]
        out = self.model.apply({"params": params}, images, noise=self._eval_noise(images),
                               train=False)
        target = patchify(images, self.model.patch_size)
        return {"loss": per_example_masked_loss(out["pred"], target, out["mask"],
                                                self.model.norm_pix_loss)}

    def load_pretrained(self, params, extra):
        """config.init_from: continue from (or, with total_steps=0, evaluate) another MAE run."""
        if not self.config.init_from:
            return params, extra
        from vit_jax import checkpoint
        from vit_jax.evaluate import backbone
        source = jax.device_get(checkpoint.load_params(self.config.init_from))
        merged, _ = backbone.merge(jax.device_get(params), source)
        return merged, extra

    # ------------------------------------------------------------------ pictures
    def on_eval(self, params, extra, ctx) -> dict[str, float]:
        """At each evaluation: the reconstruction grid of 8 eval images (process 0)."""
        if ctx.is_main and ctx.eval_source is not None:
            # 8 images spread over the split (sorted sets would otherwise show one class)
            picks = np.unique(np.linspace(0, len(ctx.eval_source) - 1, 8).astype(int))
            examples = [ctx.eval_transform(dict(ctx.eval_source[int(i)])) for i in picks]
            batch = {"image": np.stack([np.asarray(e["image"]) for e in examples])}
            self.write_pictures(jax.device_get(params), extra, batch, ctx.workdir, ctx.step)
        return {}

    def write_pictures(self, params: Params, extra: Extra, batch: Batch, directory: str,
                       step: int) -> list[str]:
        """Saves a reconstruction grid of the first 8 (real) eval images; returns its path.

        Host-side: call it with a batch this process can read (e.g. on process 0).
        """
        images = np.asarray(jax.device_get(batch["image"]), np.float32)
        if "mask" in batch:  # skip the padding rows of the last eval batch
            images = images[np.asarray(jax.device_get(batch["mask"])) > 0]
        images = images[:8]
        if len(images) == 0:
            return []
        if self._picture_fn is None:
            self._picture_fn = jax.jit(lambda p, x, n: self.model.apply({"params": p}, x, noise=n))
        x = jnp.asarray(images)
        out = jax.device_get(self._picture_fn(params, x, self._eval_noise(x)))
        mean, std = transforms_lib.normalization_stats(self.config.data.eval_transform)
        grid = viz.mae_grid(images, out["pred"], out["mask"], self.model.patch_size, mean, std,
                            self.model.norm_pix_loss)
        path = os.path.join(directory, f"mae_reconstruction_{int(step):06d}.png")
        viz.save_png(grid, path)
        return [path]


register("mae", MAEObjective)
