"""Distillation from a frozen teacher (objective "distill"): DeiT's distillation token (Touvron et
al. 2021) and TinyMIM's relations (Ren et al. 2023). The `config.distill` section:

    teacher     workdir:PATH (a vit_jax run) | hf:FOLDER (a Hugging Face folder); vit_jax/teachers.py
    target      "logits" (DeiT): the teacher is any classifier (ResNet, CCT, ViT ..., with its
                BatchNorm statistics), the student a ViT with the distillation token
                (model.dist_token=True, or a deit_*_distilled_* model_name).
                "relations" (TinyMIM): the teacher is a ViT (e.g. an MAE run's encoder), the
                student a headless ViT, pre-trained to match the teacher's token relations; then
                fine-tune it (configs/mnist5k/finetune.py:WORKDIR).
    type        logits: "hard" | "soft" | "none" (no teacher: the class head alone, the baseline
                without distillation; then the student has no distillation token)
    alpha, tau  logits: the distillation term's weight and soft distillation's temperature
    label_smoothing, mixup_alpha, cutmix_alpha, mix_prob   logits: the base criterion, as the
                supervised objective's; the teacher sees the same (mixed) images as the student
    teacher_layer   relations: the teacher's block, 1-based (TinyMIM's `intermediate`: 18 of 24
                for ViT-L, 12 of 12 for ViT-B / S); negative counts from the end (-1: the last)
    teacher_dtype   float32 | bfloat16: the teacher's params and compute

Losses: vit_jax/objectives/distill_losses.py. The teacher lives in the state's `extra` (sharded
and checkpointed with the run, put there from the host as EVA's is), outside the gradient. The
teacher is shown the student's own augmented batch, un-normalised with the student's statistics
and normalised with the teacher run's.
Relations: the student's last block gives relations over as many heads as the teacher block
has (TinyMIM changes the head count of the student's last block; its q / k / v projections have
the same shapes for any head count, so here they are split into the teacher's heads for the
loss while the block keeps its own for the forward pass). The last block's output projection and
MLP and the final norm get no gradient (as in TinyMIM, where they are unused in pre-training).
Evaluation ("metrics"): logits: loss / accuracy / top5 of the averaged heads (DeiT's inference)
and accuracy_cls, accuracy_dist (each head alone), accuracy_teacher; relations: the loss terms.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vit_jax import models, teachers
from vit_jax.data import mixup as mixup_lib
from vit_jax.data import transforms as transforms_lib
from vit_jax.data.info import DataInfo
from vit_jax.models.vit import ViT
from vit_jax.objectives import distill_losses as losses
from vit_jax.objectives.base import (Batch, Extra, Objective, Params, apply_module, backbone_kwargs,
                                     init_module, no_head, require_classes)
from vit_jax.objectives.supervised import classification_metrics

Array = jax.Array

TARGETS = ("logits", "relations")
TYPES = ("hard", "soft", "none")


def block_qkv(module: ViT, variables: dict, images: Array, index: int, train: bool = False,
              rng: Array | None = None) -> tuple[Array, Array, Array]:
    """q, k, v (B, N, D) of block `index` (0-based) of a ViT on images: its attention's
    projections of the block's norm1 output, read from the forward pass (capture_intermediates)."""
    names = ("qkv",) if module.fused_qkv else ("query", "key", "value")
    wanted = {(f"blocks_{index}", "attn", n) for n in names}
    _, state = module.apply(variables, images, train=train, rngs={"dropout": rng} if rng is not None else {},
                            capture_intermediates=lambda m, method: method == "__call__"
                            and tuple(m.path) in wanted, mutable=["intermediates"])
    node = state["intermediates"][f"blocks_{index}"]["attn"]
    outs = [node[n]["__call__"][0] for n in names]
    if module.fused_qkv:   # columns [q | k | v] (layers.Attention)
        return tuple(jnp.split(outs[0], 3, axis=-1))
    return tuple(outs)


class Distill(Objective):
    """logits: params = the student ViT's (with both heads); extra = {"teacher": its variables}.
    relations: params = the headless student ViT's; extra = {"teacher": the teacher ViT's params}."""
    defaults = dict(
        teacher="",
        target="logits",
        type="hard",
        alpha=0.5,              # DeiT's defaults
        tau=1.0,
        label_smoothing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        mix_prob=1.0,
        teacher_layer=-1,
        teacher_dtype="float32",
    )

    def __init__(self, config: mlc.ConfigDict, info: DataInfo):
        super().__init__(config, info)
        s = self.cfg
        if s.target not in TARGETS:
            raise ValueError(f"distill.target={s.target!r}: use one of {TARGETS}")
        if s.teacher_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"distill.teacher_dtype={s.teacher_dtype!r}: use 'float32' or 'bfloat16'.")
        self.teacher = None
        self.student_stats = transforms_lib.normalization_stats(config.data.train_transform)
        if s.target == "logits":
            self._init_logits(config, info)
        else:
            self._init_relations(config, info)

    def _need_teacher(self) -> str:
        if not self.cfg.teacher:
            raise ValueError("distill.teacher is not set; give the teacher run: "
                             "--config.distill.teacher=workdir:PATH (or hf:FOLDER)")
        return self.cfg.teacher

    def _init_logits(self, config: mlc.ConfigDict, info: DataInfo) -> None:
        s = self.cfg
        if s.type not in TYPES:
            raise ValueError(f"distill.type={s.type!r}: use one of {TYPES}")
        if not 0.0 <= s.alpha <= 1.0 or not s.tau > 0:
            raise ValueError(f"distill.alpha={s.alpha} must be in [0, 1] and distill.tau={s.tau} > 0")
        if not 0.0 <= s.label_smoothing < 1.0 or s.mixup_alpha < 0 or s.cutmix_alpha < 0 \
                or not 0.0 <= s.mix_prob <= 1.0:
            raise ValueError("distill.label_smoothing must be in [0, 1), mixup_alpha and cutmix_alpha "
                             ">= 0, mix_prob in [0, 1]")
        require_classes(info, "distillation")
        self.backbone = models.create(config.model_name, **backbone_kwargs(config, info))
        if getattr(self.backbone, "num_classes", 0) != info.num_classes:
            raise ValueError(f"the distilled student classifies: remove config.model.num_classes "
                             f"(the data has {info.num_classes} classes)")
        distilled = isinstance(self.backbone, ViT) and self.backbone.dist_token
        if s.type == "none":
            if distilled:
                raise ValueError("distill.type='none' trains the class head alone (DeiT without a "
                                 "teacher): remove the distillation token (model.dist_token=False), or "
                                 "choose distill.type='hard' or 'soft'")
            return
        if not distilled:
            raise ValueError(
                f"distill.type={s.type!r} trains DeiT's distillation head, but the student "
                f"{config.model_name!r} ({type(self.backbone).__name__}) has no distillation token: "
                "use a ViT with --config.model.dist_token=True (or a deit_*_distilled_* model_name)")
        self.teacher = teachers.load_classifier(self._need_teacher(), jnp.dtype(s.teacher_dtype))
        self.teacher.check_student(info.num_classes, int(info.image_shape[2]))
        self.frozen_extra = {"teacher": self.teacher.variables}

    def _init_relations(self, config: mlc.ConfigDict, info: DataInfo) -> None:
        s = self.cfg
        no_head(config, "TinyMIM relation distillation")
        self.backbone = models.create(config.model_name, **backbone_kwargs(config, info, num_classes=0))
        student = self.backbone
        if not isinstance(student, ViT) or student.scan:
            raise ValueError(f"distill.target='relations' needs an unscanned ViT student (model.scan="
                             f"False); {config.model_name!r} is a {type(student).__name__}")
        self.teacher = teachers.load(self._need_teacher(), jnp.dtype(s.teacher_dtype))
        t = self.teacher.module
        self.grid = student.base_grid
        self.teacher.check_student(self.grid, int(info.image_shape[2]))
        layer = int(s.teacher_layer)
        self.teacher_index = layer - 1 if layer > 0 else t.depth + layer
        if layer == 0 or not 0 <= self.teacher_index < t.depth or t.scan:
            raise ValueError(f"distill.teacher_layer={layer}: the teacher has blocks 1..{t.depth} "
                             "(negative counts from the end: -1 is the last); scanned teachers are "
                             "not supported")
        self.heads = int(t.num_heads)
        if student.width % self.heads:
            raise ValueError(f"the student's width {student.width} does not split into the teacher's "
                             f"{self.heads} heads (TinyMIM matches the student's last block to them)")
        if t.num_prefix_tokens != student.num_prefix_tokens:
            raise ValueError(f"teacher and student must have the same tokens for relations: the teacher "
                             f"has {t.num_prefix_tokens} prefix token(s), the student "
                             f"{student.num_prefix_tokens} (model.class_token)")
        self.frozen_extra = {"teacher": self.teacher.variables["params"]}

    # ------------------------------------------------------------------ interface
    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        params, extra = init_module(self.backbone, rng, batch["image"])
        if self.teacher is not None:
            # Placeholders with the teacher's shapes: a fresh run gets the weights from
            # frozen_extra (on the host, not baked into the program), a resumed run from its checkpoint.
            extra["teacher"] = jax.tree.map(lambda x: jnp.zeros(np.shape(x), np.asarray(x).dtype),
                                            self.frozen_extra["teacher"])
        return params, extra

    def backbone_variables(self, params: Params, extra: Extra) -> dict:
        return {"params": params, **self._student_collections(extra)}

    @staticmethod
    def _student_collections(extra: Extra) -> dict:
        return {k: v for k, v in extra.items() if k != "teacher"}

    def _teacher_logits(self, extra: Extra, images: Array) -> Array:
        mean, std = self.student_stats
        return self.teacher.logits(extra["teacher"], images, mean, std)

    def _relation_loss(self, params: Params, extra: Extra, images: Array, train: bool,
                       rng: Array | None) -> tuple[Array, Array]:
        """Per-example (qk, vv) KL terms (B,)."""
        student = self.backbone
        q, k, v = block_qkv(student, {"params": params}, images, student.depth - 1, train, rng)
        mean, std = self.student_stats
        pixels = self.teacher.pixels_for(images, mean, std, self.grid)
        t_params = jax.lax.stop_gradient(extra["teacher"])
        tq, tk, tv = block_qkv(self.teacher.module, {"params": t_params},
                               pixels.astype(self.teacher.module.dtype), self.teacher_index)
        t_qk, t_vv = jax.lax.stop_gradient(losses.log_relations(tq, tk, tv, self.heads))
        s_qk, s_vv = losses.log_relations(q, k, v, self.heads)
        return losses.relation_kl(t_qk, s_qk), losses.relation_kl(t_vv, s_vv)

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[Array, tuple[dict[str, Array], Extra]]:
        s = self.cfg
        rng_mix, rng_drop = jax.random.split(rng)
        images = batch["image"]
        if s.target == "relations":
            qk, vv = self._relation_loss(params, extra, images, True, rng_drop)
            loss = qk.mean() + vv.mean()
            return loss, ({"loss": loss, "loss_qk": qk.mean(), "loss_vv": vv.mean()}, extra)
        targets = mixup_lib.one_hot_smooth(batch["label"], self.info.num_classes, s.label_smoothing)
        if s.mixup_alpha > 0 or s.cutmix_alpha > 0:
            images, targets = mixup_lib.mixup_cutmix(rng_mix, images, targets, s.mixup_alpha,
                                                     s.cutmix_alpha, prob=s.mix_prob, groups=self.batch_shards)
        out, aux, collections = apply_module(self.backbone, params, self._student_collections(extra),
                                             images, True, rng_drop)
        teacher = None if self.teacher is None else self._teacher_logits(extra, images)
        loss, base, distill = losses.deit_loss(aux.get("logits_cls", out), aux.get("logits_dist"),
                                               targets, teacher, s.type, s.alpha, s.tau)
        metrics = {"loss": loss, "loss_cls": base, "loss_distill": distill,
                   "accuracy": jnp.mean(jnp.argmax(out, -1) == batch["label"])}
        return loss, (metrics, {**extra, **collections})

    def eval_metrics(self, params: Params, extra: Extra, batch: Batch) -> dict[str, Array]:
        images, labels = batch["image"], batch["label"]
        if self.cfg.target == "relations":
            qk, vv = self._relation_loss(params, extra, images, False, None)
            return {"loss": qk + vv, "loss_qk": qk, "loss_vv": vv}
        out, aux, _ = apply_module(self.backbone, params, self._student_collections(extra), images, False)
        metrics = classification_metrics(out, labels)   # the averaged heads: DeiT's inference
        hit = lambda logits: (jnp.argmax(logits, -1) == labels).astype(jnp.float32)  # noqa: E731
        if "logits_dist" in aux:
            metrics.update(accuracy_cls=hit(aux["logits_cls"]), accuracy_dist=hit(aux["logits_dist"]))
        if self.teacher is not None:
            metrics["accuracy_teacher"] = hit(self._teacher_logits(extra, images))
        return metrics
