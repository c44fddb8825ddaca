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
                                per_example_masked_cosine_loss, pooled_cosine_loss,
                                standardize_targets)
from vit_jax.models.vit import ViT
from vit_jax.objectives.base import Batch, Extra, Objective, Params, backbone_kwargs, no_head

Array = jax.Array

EVAL_MASK_SEED = 0   # the fixed evaluation mask
TARGET_NORMS = ("none", "batch")


class EVAObjective(Objective):
    """EVA: params = {"encoder": ViT backbone, "mask_token", "head"}; extra = {"teacher": params}."""
    # EVA-01's settings: CLIP-L/14 teacher, 105 of 256 patches masked in blocks
    defaults = dict(
        teacher="dinov2_vits14",   # hf:FOLDER | dinov2_vits14 | workdir:PATH (vit_jax/teachers.py)
        teacher_dtype="float32",   # float32 | bfloat16: the teacher's params and compute
        teacher_view="student",    # student (EVA: the teacher shown the student's patch grid) |
                                   # native (its own image size, tokens resized to the grid; not EVA's)
        target_norm="none",        # none (EVA) | batch: each target channel standardised over the
                                   # batch's tokens (models/eva.standardize_targets; not EVA's)
        mask="block",              # block (BEiT/EVA) | random
        mask_ratio=0.4,            # used when mask_count == 0
        mask_count=0,              # > 0: exactly this many patches (EVA-01: 105 of 256)
        min_block=16,              # smallest block of the block-wise masks (EVA-01: 16)
        init_std=0.02,             # EVA's truncated-normal init (EVA-g: 0.015)
        cls_weight=0.0,            # 0 (EVA: the class token has no target) | > 0: adds cls_weight x
                                   # -cos(head(class token), the mean target token), not EVA's
    )
    backbone_key = ("encoder",)

    def __init__(self, config: mlc.ConfigDict, info: DataInfo):
        super().__init__(config, info)
        e = self.cfg
        if e.teacher_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"eva.teacher_dtype={e.teacher_dtype!r}: use 'float32' or 'bfloat16'.")
        if e.target_norm not in TARGET_NORMS:
            raise ValueError(f"eva.target_norm={e.target_norm!r}: use one of {TARGET_NORMS}.")
        if e.mask not in masking.MASKERS:
            raise ValueError(f"eva.mask={e.mask!r}: use one of {masking.MASKERS}.")
        no_head(config, "EVA")
        self.backbone: ViT = models.create(config.model_name, **backbone_kwargs(config, info, num_classes=0))
        if not isinstance(self.backbone, ViT):
            raise ValueError(f"EVA needs a ViT student; {config.model_name!r} is a "
                             f"{type(self.backbone).__name__}. Choose a vit_* model_name.")
        self.cls_weight = float(e.cls_weight)
        if self.cls_weight < 0:
            raise ValueError(f"eva.cls_weight={e.cls_weight} must be >= 0 (0: EVA's, no class-token target).")
        if self.cls_weight > 0 and not self.backbone.class_token:
            raise ValueError(f"eva.cls_weight={e.cls_weight} regresses the class token, and "
                             f"{config.model_name!r} has none: set model.class_token=True or eva.cls_weight=0.")
        self.grid = self.backbone.base_grid
        num_patches = self.grid[0] * self.grid[1]
        self.count = masking.num_masked(num_patches, e.mask_ratio, e.mask_count)
        if int(e.min_block) < 1:
            raise ValueError(f"eva.min_block={e.min_block} must be >= 1.")
        self.teacher = teachers.load(e.teacher, jnp.dtype(e.teacher_dtype), str(e.teacher_view))
        self.teacher.check_student(self.grid, int(info.image_shape[2]))
        self.frozen_extra = {"teacher": self.teacher.variables["params"]}
        self.model = MaskedFeatureStudent(encoder=self.backbone, target_dim=self.teacher.dim,
                                          with_cls=self.cls_weight > 0)
        self.student_stats = transforms_lib.normalization_stats(config.data.train_transform)
        self.eval_mask = self._draw(np.random.default_rng(EVAL_MASK_SEED))

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return masking.make_mask(self.cfg.mask, self.grid, self.count, rng,
                                 int(self.cfg.min_block)).reshape(-1)

    # ------------------------------------------------------------------ interface
    def prepare_example(self, example: dict, rng: np.random.Generator) -> dict:
        return dict(example, patch_mask=self._draw(rng))

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        rng_init, rng_eva = jax.random.split(rng)
        images = batch["image"]
        mask = jnp.zeros((images.shape[0], self.grid[0] * self.grid[1]), bool)
        params = self.model.init(rng_init, images, mask)["params"]
        params = eva_init(params, rng_eva, float(self.cfg.init_std))
        # Placeholders with the teacher's shapes: a fresh run gets the weights from frozen_extra
        # (on the host, not baked into this program), a resumed run from its checkpoint.
        pixels = jax.ShapeDtypeStruct((1,) + self.teacher.input_size(self.grid)
                                      + (self.teacher.module.in_channels,), jnp.float32)
        shapes = jax.eval_shape(self.teacher.module.init, jax.random.key(0), pixels)["params"]
        teacher = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return params, {"teacher": teacher}

    def _targets(self, extra: Extra, images: Array) -> Array:
        mean, std = self.student_stats
        targets = self.teacher.targets(extra["teacher"], images, mean, std, self.grid)
        # "batch": statistics of the batch at hand (in evaluation too, padded rows included)
        return standardize_targets(targets) if self.cfg.target_norm == "batch" else targets

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[Array, tuple[dict[str, Array], Extra]]:
        images, mask = batch["image"], batch["patch_mask"]
        pred = self.model.apply({"params": params}, images, mask, train=True,
                                rngs={"dropout": rng})
        targets = self._targets(extra, images)
        if not self.cls_weight:
            loss = masked_cosine_loss(pred, targets, mask)
            return loss, ({"loss": loss}, extra)
        patches = masked_cosine_loss(pred[:, 1:], targets, mask)
        cls = jnp.mean(pooled_cosine_loss(pred[:, 0], targets))
        loss = patches + self.cls_weight * cls
        return loss, ({"loss": loss, "loss_patches": patches, "loss_cls": cls}, extra)

    def eval_metrics(self, params: Params, extra: Extra, batch: Batch) -> dict[str, Array]:
        images = batch["image"]
        mask = jnp.broadcast_to(jnp.asarray(self.eval_mask), (images.shape[0], self.eval_mask.size))
        pred = self.model.apply({"params": params}, images, mask, train=False)
        targets = self._targets(extra, images)
        if not self.cls_weight:
            return {"loss": per_example_masked_cosine_loss(pred, targets, mask)}
        patches = per_example_masked_cosine_loss(pred[:, 1:], targets, mask)
        cls = pooled_cosine_loss(pred[:, 0], targets)
        return {"loss": patches + self.cls_weight * cls, "loss_patches": patches, "loss_cls": cls}

