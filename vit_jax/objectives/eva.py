"""EVA pre-training objective (Fang et al. 2022): regress a frozen teacher's patch features at
masked positions. The `config.eva` section, the per-example masks, loss and evaluation.

The student is vit_jax/models/eva.py (any registry ViT + mask token + linear head); the teacher
comes from vit_jax/teachers.py and lives in the state's `extra` (so it is sharded like the
student and checkpointed with the run), outside the gradient: the optimizer never sees it and
its outputs pass through stop_gradient. Masks are drawn on the host per example
(prepare_example -> batch["patch_mask"]); evaluation uses one fixed mask for every image, so
the eval loss is deterministic.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vit_jax import models, teachers
from vit_jax.data import masking
from vit_jax.data import transforms as transforms_lib
from vit_jax.data.info import DataInfo
from vit_jax.models.eva import (MaskedFeatureStudent, eva_init, masked_cosine_loss,
                                per_example_masked_cosine_loss)
from vit_jax.models.vit import ViT
from vit_jax.objectives import Batch, Extra, Objective, Params, config_section, register

Array = jax.Array

EVAL_MASK_SEED = 0   # the fixed evaluation mask


def default_config() -> mlc.ConfigDict:
    """The `config.eva` section, with EVA-01's settings (CLIP-L/14 teacher, 105 of 256 in blocks)."""
    return mlc.ConfigDict(dict(
        teacher="dinov2_vits14",   # hf:FOLDER | dinov2_vits14 | workdir:PATH (vit_jax/teachers.py)
        teacher_dtype="float32",   # float32 | bfloat16: the teacher's params and compute
        mask="block",              # block (BEiT/EVA) | random
        mask_ratio=0.4,            # used when mask_count == 0
        mask_count=0,              # > 0: exactly this many patches (EVA-01: 105 of 256)
        min_block=16,              # smallest block of the block-wise masks (EVA-01: 16)
        init_std=0.02,             # EVA's truncated-normal init (EVA-g: 0.015)
    ))


class EVAObjective(Objective):
    """EVA: params = {"encoder": ViT backbone, "mask_token", "head"}; extra = {"teacher": params}."""
    name = "eva"

    def __init__(self, config: mlc.ConfigDict, info: DataInfo):
        super().__init__(config, info)
        self.eva_config = e = config_section(config, "eva", default_config())
        if e.teacher_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"eva.teacher_dtype={e.teacher_dtype!r}: use 'float32' or 'bfloat16'.")
        if e.mask not in masking.MASKERS:
            raise ValueError(f"eva.mask={e.mask!r}: use one of {masking.MASKERS}.")
        kw = dict(config.model)
        if kw.get("num_classes", 0) != 0:
            raise ValueError("EVA's encoder has no classification head; remove config.model.num_classes.")
        kw.update(num_classes=0)
        kw.setdefault("image_size", tuple(info.image_shape[:2]))
        kw.setdefault("in_channels", info.image_shape[2])
        if config.dtype != "float32":
            kw.setdefault("dtype", jnp.dtype(config.dtype))
        self.backbone: ViT = models.create(config.model_name, **kw)
        if not isinstance(self.backbone, ViT):
            raise ValueError(f"EVA needs a ViT student; {config.model_name!r} is a "
                             f"{type(self.backbone).__name__}. Choose a vit_* model_name.")
        self.grid = self.backbone.base_grid
        num_patches = self.grid[0] * self.grid[1]
        self.count = masking.num_masked(num_patches, e.mask_ratio, e.mask_count)
        if int(e.min_block) < 1:
            raise ValueError(f"eva.min_block={e.min_block} must be >= 1.")
        self.teacher = teachers.load(e.teacher, jnp.dtype(e.teacher_dtype))
        self.teacher.check_student(self.grid, int(info.image_shape[2]))
        self.model = MaskedFeatureStudent(encoder=self.backbone, target_dim=self.teacher.dim)
        self.student_stats = transforms_lib.normalization_stats(config.data.train_transform)
        self.eval_mask = self._draw(np.random.default_rng(EVAL_MASK_SEED))

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return masking.make_mask(self.eva_config.mask, self.grid, self.count, rng,
                                 int(self.eva_config.min_block)).reshape(-1)

    # ------------------------------------------------------------------ interface
    def prepare_example(self, example: dict, rng: np.random.Generator) -> dict:
        return dict(example, patch_mask=self._draw(rng))

    def backbone_params(self, params: Params) -> Params:
        return params["encoder"]

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        rng_init, rng_eva = jax.random.split(rng)
        images = batch["image"]
        mask = jnp.zeros((images.shape[0], self.grid[0] * self.grid[1]), bool)
        params = self.model.init(rng_init, images, mask)["params"]
        params = eva_init(params, rng_eva, float(self.eva_config.init_std))
        # Placeholders with the teacher's shapes; load_pretrained puts its weights in (fresh runs),
        # a resumed run restores them from the checkpoint.
        pixels = jax.ShapeDtypeStruct((1,) + self.teacher.input_size(self.grid)
                                      + (self.teacher.module.in_channels,), jnp.float32)
        shapes = jax.eval_shape(self.teacher.module.init, jax.random.key(0), pixels)["params"]
        teacher = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return params, {"teacher": teacher}

    def load_pretrained(self, params: Params, extra: Extra) -> tuple[Params, Extra]:
        want = jax.tree.structure(extra["teacher"])
        got = self.teacher.variables["params"]
        if jax.tree.structure(got) != want:
            raise ValueError(f"teacher {self.teacher.spec!r}: its parameter tree does not match the "
                             "teacher module's (was it converted with scan=True?).")
        extra = dict(extra, teacher=got)
        if self.config.init_from:   # continue from (or evaluate) another EVA run's student
            from vit_jax import checkpoint
            from vit_jax.evaluate import backbone
            source = jax.device_get(checkpoint.load_params(self.config.init_from))
            params, _ = backbone.merge(jax.device_get(params), source)
        return params, extra

    def _targets(self, extra: Extra, images: Array) -> Array:
        mean, std = self.student_stats
        return self.teacher.targets(extra["teacher"], images, mean, std, self.grid)

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[Array, tuple[dict[str, Array], Extra]]:
        images, mask = batch["image"], batch["patch_mask"]
        pred = self.model.apply({"params": params}, images, mask, train=True,
                                rngs={"dropout": rng})
        loss = masked_cosine_loss(pred, self._targets(extra, images), mask)
        return loss, ({"loss": loss}, extra)

    def evaluate(self, params: Params, extra: Extra, batch: Batch) -> dict[str, Array]:
        images = batch["image"]
        mask = jnp.broadcast_to(jnp.asarray(self.eval_mask), (images.shape[0], self.eval_mask.size))
        pred = self.model.apply({"params": params}, images, mask, train=False)
        return {"loss": per_example_masked_cosine_loss(pred, self._targets(extra, images), mask)}


register("eva", EVAObjective)
