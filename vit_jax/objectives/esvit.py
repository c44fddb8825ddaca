"""EsViT (Li et al. 2021) and DINO (Caron et al. 2021) self-distillation: the `config.esvit` section.

A student (backbone + DINO view head [+ region head]) sees 2 global and N local crops of every
image; the teacher, an EMA of the student outside the gradient, sees the 2 global crops. The loss
(vit_jax/objectives/dino_losses.py) is DINO's view-level cross-entropy, plus with esvit.region the
region-level one: each student token is matched to its most similar teacher token. Backbones: any
registry model (Swin, as EsViT; CvT; ViT, whose position embedding is resized for local crops);
the view head reads the pooled features (`out` with num_classes=0: Swin's average pool, the ViT
/ CvT class token), the region head the final tokens without the class token.

State: params = {"backbone", "head"[, "region_head"]}; extra = {"ema_teacher": {"params", "stats"},
"stats" (the student's BatchNorm statistics, CvT), "center", "center_grid"}. Schedules are pure
functions of the step: teacher temperature (per epoch), EMA momentum (cosine, per step).
The heads' last layers are held still by the optimizer during the first
esvit.freeze_last_layer_epochs (the `held` declaration, torch's skip of a parameter without gradient).
Options not in the papers (off by default): DINOv2's Sinkhorn-Knopp targets and KoLeo, and iBOT's
masked patch target (esvit.mim_weight, ViT only: masks drawn in prepare_example as "mim_mask",
params["mask_token"], extra["center_patch"]; `_mim_term`).
Multi-crop happens on the host (prepare_example, vit_jax/data/multicrop.py): data.train_transform
must end with normalize('none') (pixels in [0, 1]); the crops are normalised with esvit.pixel_stats.
Evaluation reads the EMA teacher's backbone (`backbone_variables`): configs name a "knn"
evaluator (eval/knn/top1_k*) and a "correspondences" one (`correspondence_image`, and
`correspondence_ink`: eval/NAME/ink_top10, the share of the top-10 matches on ink in both views).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vit_jax import durations, models, viz
from vit_jax.data import masking, multicrop, photometric
from vit_jax.data import transforms as transforms_lib
from vit_jax.data.info import DataInfo
from vit_jax.models.dino_head import DINOHead
from vit_jax.models.layers import pair
from vit_jax.models.vit import ViT
from vit_jax.objectives import dino_losses as losses
from vit_jax.objectives.base import (Batch, Extra, Objective, Params, apply_module, backbone_kwargs,
                                     init_module, no_head)

Array = jax.Array


def _token_count(aux: dict) -> int:
    """Patch tokens of the final feature map (the class token, if any, is not one)."""
    if "patch_grid" in aux:                 # ViT
        h, w = aux["patch_grid"]
        return int(h * w)
    last = aux["stages"][-1]               # Swin, CvT: (B, h, w, C)
    return int(np.prod(last.shape[1:-1]))


class EsViT(Objective):
    """EsViT (esvit.region=True) / DINO (False). See the module docstring."""
    # the papers' ImageNet settings (Swin-T, 2 x 224 + 8 x 96)
    defaults = dict(
        region=True,                     # False: plain DINO (view loss only)
        out_dim=65536, hidden_dim=2048, bottleneck_dim=256, head_layers=3, norm_last_layer=True,
        student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30,
        momentum_teacher=0.996, center_momentum=0.9, freeze_last_layer_epochs=1,
        # multi-crop (vit_jax/data/multicrop.py MultiCropSpec)
        global_size=224, local_size=96, num_local=8, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
        flip=True, pixel_stats="imagenet",
        # True: crops leave the host as uint8 with their photometric parameters, and jitter, grayscale,
        # blur, solarize and normalisation run inside the jitted step (vit_jax/data/photometric.py;
        # torchvision's float semantics instead of PIL's 8-bit ones, the same random draws)
        photometric_on_device=False,
        # DINO's photometric ops: probabilities, (global 1, global 2, local) where a triple
        jitter_p=0.8, gray_p=0.2, blur_p=(1.0, 0.1, 0.5), solarize_p=(0.0, 0.2, 0.0),
        # the blur's sigma range in pixels of a 224-px global crop, scaled to global_size
        # (multicrop.py); DINO's code blurs (0.1, 2) px whatever the crop size
        blur_sigma=(0.1, 2.0),
        # shape ops, not DINO's (0 = off): rotation / shear in degrees, 3x3 max / min filter probability
        rotate=0.0, shear=0.0, morph_p=0.0, morph_strength=(1.0, 1.0),
        # remedies for collapse from DINOv2, not in the DINO / EsViT papers (0 = off, faithful)
        sinkhorn_iters=0,                # > 0: Sinkhorn-Knopp teacher targets instead of centering
        koleo_weight=0.0,                # KoLeo on the student's pooled features of each global crop
        # iBOT's masked patch target (ViT only; not with region): weight of the patch term (0 = off);
        # each global crop is masked with probability mim_prob, a fraction U(mim_ratio) of its
        # patches in blocks of >= mim_min_block (DINOv2's 0.5 and (0.1, 0.5))
        mim_weight=0.0, mim_prob=0.5, mim_ratio=(0.1, 0.5), mim_min_block=4,
        # > 0: the region term on content tokens only: a token whose cell of the crop has pixel std
        # <= this (normalised pixels; flat background) neither counts nor is matched (0 = EsViT)
        region_min_std=0.0,
    )
    backbone_key = ("backbone",)
    weight_decay_rule = "dino"  # all but biases and 1-D tensors (dino's get_params_groups)

    def __init__(self, config: mlc.ConfigDict, info: DataInfo):
        super().__init__(config, info)
        e = self.cfg
        no_head(config, "EsViT")
        if config.init_from:
            raise ValueError("esvit does not start from init_from (its EMA teacher would not): "
                             "remove config.init_from.")
        size = (int(e.global_size), int(e.global_size), info.image_shape[2])
        kw = backbone_kwargs(config, dataclasses.replace(info, image_shape=size), num_classes=0)
        self.backbone = models.create(config.model_name, **kw)
        # DINO's teacher has no drop path; its dropout is off anyway (deterministic apply)
        dpr = getattr(self.backbone, "drop_path_rate", 0.0)
        self.teacher_model = self.backbone.clone(
            drop_path_rate=tuple(0.0 for _ in dpr) if isinstance(dpr, (tuple, list)) else 0.0)
        head = dict(out_dim=int(e.out_dim), hidden_dim=int(e.hidden_dim),
                    bottleneck_dim=int(e.bottleneck_dim), num_layers=int(e.head_layers),
                    norm_last_layer=bool(e.norm_last_layer))
        self.head = DINOHead(**head)
        self.region_head = DINOHead(**head) if e.region else None
        self.crops = multicrop.MultiCropSpec(
            global_size=int(e.global_size), local_size=int(e.local_size), num_local=int(e.num_local),
            global_scale=tuple(e.global_scale), local_scale=tuple(e.local_scale), flip=bool(e.flip),
            jitter_p=float(e.jitter_p), gray_p=float(e.gray_p), blur_p=tuple(e.blur_p),
            blur_sigma=tuple(e.blur_sigma),
            solarize_p=tuple(e.solarize_p), rotate=float(e.rotate), shear=float(e.shear),
            morph_p=float(e.morph_p), morph_strength=tuple(e.morph_strength),
            mean=transforms_lib.get_stats(e.pixel_stats)[0], std=transforms_lib.get_stats(e.pixel_stats)[1],
            on_device=bool(e.photometric_on_device))
        self.blur_radius = photometric.blur_radius(multicrop.sigma_pixels(self.crops)[1])
        self.total_steps = durations.total_steps(config, info.num_train)
        # DINO's epochs drop the last partial batch: set data.drop_remainder for its step counts
        self.steps_per_epoch = max(durations.steps_per_epoch(
            info.num_train, config.batch_size, durations.drop_remainder(config)), 1e-9)
        # DINO's cancel_gradients_last_layer sets the last layers' .grad to None: torch's AdamW
        # neither decays nor moves them, and their Adam step count starts at the unfreeze
        freeze = int(math.ceil(float(self.cfg.freeze_last_layer_epochs) * self.steps_per_epoch))
        self.held = ("(head|region_head)/last_layer/", freeze) if freeze > 0 else None
        self.mim = float(e.mim_weight) > 0
        self._check()
        if self.mim:   # the global crops' patch grid
            ph, pw = pair(self.backbone.patch_size)
            self.mim_grid = (int(e.global_size) // ph, int(e.global_size) // pw)

    # ------------------------------------------------------------------ checks and data
    def _check(self) -> None:
        e = self.cfg
        self.crops.validate()
        if transforms_lib.normalization_stats(self.config.data.train_transform) != ((0.0,), (1.0,)):
            raise ValueError("EsViT crops and normalises each image itself (esvit.pixel_stats): end "
                             "data.train_transform with normalize('none'), e.g. \"normalize('none')\".")
        stats = transforms_lib.get_stats(e.pixel_stats)
        if self.config.data.eval_split and \
                transforms_lib.normalization_stats(self.config.data.eval_transform) != stats:
            raise ValueError(f"data.eval_transform must normalise like the crops (esvit.pixel_stats="
                             f"{e.pixel_stats!r}): end it with normalize('{e.pixel_stats}').")
        if not (0 < e.student_temp and 0 < e.teacher_temp and 0 < e.warmup_teacher_temp):
            raise ValueError("esvit temperatures must be > 0.")
        if not 0.0 <= e.momentum_teacher <= 1.0 or not 0.0 <= e.center_momentum < 1.0:
            raise ValueError("esvit.momentum_teacher must be in [0, 1] and esvit.center_momentum in [0, 1).")
        if e.warmup_teacher_temp_epochs < 0 or e.freeze_last_layer_epochs < 0:
            raise ValueError("esvit.warmup_teacher_temp_epochs and freeze_last_layer_epochs must be >= 0.")
        if float(e.region_min_std) < 0:
            raise ValueError(f"esvit.region_min_std={e.region_min_std} must be >= 0 (0: off).")
        if int(e.sinkhorn_iters) < 0 or float(e.koleo_weight) < 0 or float(e.mim_weight) < 0:
            raise ValueError("esvit.sinkhorn_iters, esvit.koleo_weight and esvit.mim_weight must be >= 0 (0: off).")
        if float(e.mim_weight) > 0:
            if not isinstance(self.backbone, ViT):
                raise ValueError(f"esvit.mim_weight > 0 (iBOT's masked patches) needs a ViT backbone, not "
                                 f"{type(self.backbone).__name__}: set esvit.mim_weight=0.")
            if e.region:
                raise ValueError("esvit.mim_weight > 0 and esvit.region: choose one patch-level loss "
                                 "(iBOT's masked patches or EsViT's region matching).")
            lo, hi = tuple(e.mim_ratio)
            if not (0 < lo <= hi < 1 and 0 <= float(e.mim_prob) <= 1 and int(e.mim_min_block) >= 1):
                raise ValueError(f"esvit.mim_ratio={tuple(e.mim_ratio)} must be (low, high) with 0 < low <= high "
                                 f"< 1, esvit.mim_prob in [0, 1], esvit.mim_min_block >= 1.")

    def prepare_example(self, example: dict, rng: np.random.Generator) -> dict:
        crops = multicrop.multi_crop(np.asarray(example["image"]), rng, self.crops)
        out = {k: v for k, v in example.items() if k != "image"}
        out.update(global_crops=crops["global"], local_crops=crops["local"])
        if self.crops.on_device:
            out.update(global_photo=crops["global_photo"], local_photo=crops["local_photo"])
        if self.mim:
            out["mim_mask"] = self._mim_masks(rng)
        return out

    def _mim_masks(self, rng: np.random.Generator) -> np.ndarray:
        """(2, h*w) bool: each global crop's masked patches (none with probability 1 - mim_prob)."""
        e, (h, w) = self.cfg, self.mim_grid
        masks = np.zeros((2, h * w), bool)
        for v in range(2):
            if rng.random() < float(e.mim_prob):
                count = int(round(rng.uniform(*tuple(e.mim_ratio)) * h * w))
                if count:
                    masks[v] = masking.block_mask((h, w), count, rng, int(e.mim_min_block)).reshape(-1)
        return masks

    def _crops(self, batch: Batch, key: str) -> Array:
        """The batch's "global" or "local" crops, float (B, V, H, W, C), normalised: as they come
        from the host, or (esvit.photometric_on_device) uint8 finished here by the photometric chain."""
        crops = batch[f"{key}_crops"]
        if not self.crops.on_device:
            return crops
        b, v = crops.shape[:2]
        if v == 0:
            return crops.astype(jnp.float32)
        x = photometric.apply(crops.reshape((b * v,) + crops.shape[2:]),
                              batch[f"{key}_photo"].reshape((b * v, -1)), self.blur_radius)
        mean, std = self.crops.stats
        x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
        return x.reshape(crops.shape)

    # ------------------------------------------------------------------ networks
    def _backbone(self, model, params, stats, images, train, rng=None, **kwargs):
        """-> (pooled (B, D), patch tokens (B, T, D), new stats (CvT's BatchNorm))."""
        out, aux, stats = apply_module(model, params, stats, images, train, rng, **kwargs)
        tokens = aux["encoded"][:, aux["encoded"].shape[1] - _token_count(aux):]
        return out.astype(jnp.float32), tokens, stats

    def _heads(self, params, pooled, tokens):
        """View logits (B, K) and region logits (B, T, K)."""
        view = self.head.apply({"params": params["head"]}, pooled)
        region = None
        if self.region_head is not None:
            b, t, d = tokens.shape
            region = self.region_head.apply({"params": params["region_head"]},
                                            tokens.reshape(b * t, d)).reshape(b, t, -1)
        return view, region

    # ------------------------------------------------------------------ interface
    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        r_b, r_h, r_r = jax.random.split(rng, 3)
        images = self._crops(batch, "global")[:, 0]
        backbone, stats = init_module(self.backbone, r_b, images)
        params = {"backbone": backbone}
        pooled, tokens, _ = self._backbone(self.backbone, params["backbone"], stats, images, False)
        params["head"] = self.head.init(r_h, pooled)["params"]
        if self.region_head is not None:
            params["region_head"] = self.region_head.init(r_r, tokens)["params"]
        if self.mim:   # iBOT's masked_embed: zeros, (1, 1, D)
            params["mask_token"] = jnp.zeros((1, 1, tokens.shape[-1]), jnp.float32)
        k = int(self.cfg.out_dim)
        extra = {"ema_teacher": {"params": params, "stats": stats}, "stats": stats,
                 "center": jnp.zeros((1, k), jnp.float32), "center_grid": jnp.zeros((1, k), jnp.float32)}
        if self.mim:
            extra["center_patch"] = jnp.zeros((1, k), jnp.float32)
        return params, extra

    def _crop_major(self, crops: Array) -> Array:
        """(B, V, H, W, C) -> (V * B, H, W, C), crop-major like DINO's torch.cat of crops."""
        b, v = crops.shape[:2]
        return crops.swapaxes(0, 1).reshape((v * b,) + crops.shape[2:])

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[Array, tuple[dict[str, Array], Extra]]:
        e = self.cfg
        g, l = self._crops(batch, "global"), self._crops(batch, "local")
        b, n_local = g.shape[0], l.shape[1]
        rng_g, rng_l = jax.random.split(rng)

        # teacher: global crops only, no gradient
        teacher = jax.lax.stop_gradient(extra["ema_teacher"])
        t_pooled, t_tokens, t_stats = self._backbone(self.teacher_model, teacher["params"]["backbone"],
                                                     teacher["stats"], self._crop_major(g), True)
        t_view, t_region = self._heads(teacher["params"], t_pooled, t_tokens)
        t_view, t_tokens = t_view.reshape(2, b, -1), t_tokens.reshape((2, b) + t_tokens.shape[1:])
        t_view, t_tokens = jax.lax.stop_gradient(t_view), jax.lax.stop_gradient(t_tokens)

        # student: global crops (with iBOT, masked), then local crops (two resolutions, two calls)
        masked = {}
        if self.mim:
            masked = dict(patch_mask=batch["mim_mask"].swapaxes(0, 1).reshape(2 * b, -1),
                          mask_token=params["mask_token"])
        s_pooled, s_tokens, stats = self._backbone(self.backbone, params["backbone"], extra["stats"],
                                                   self._crop_major(g), True, rng_g, **masked)
        s_view, s_region = self._heads(params, s_pooled, s_tokens)
        views = [s_view.reshape(2, b, -1)]
        region_list = feat_list = None
        if s_region is not None:
            region_list = list(s_region.reshape((2, b) + s_region.shape[1:]))
            feat_list = list(s_tokens.reshape((2, b) + s_tokens.shape[1:]))
        if n_local:
            l_pooled, l_tokens, stats = self._backbone(self.backbone, params["backbone"], stats,
                                                       self._crop_major(l), True, rng_l)
            l_view, l_region = self._heads(params, l_pooled, l_tokens)
            views.append(l_view.reshape(n_local, b, -1))
            if l_region is not None:
                region_list += list(l_region.reshape((n_local, b) + l_region.shape[1:]))
                feat_list += list(l_tokens.reshape((n_local, b) + l_tokens.shape[1:]))

        tau_t = losses.teacher_temperature(step, self.steps_per_epoch, float(e.warmup_teacher_temp),
                                           float(e.teacher_temp), int(e.warmup_teacher_temp_epochs))
        regions = self.region_head is not None
        t_region_2 = jax.lax.stop_gradient(t_region.reshape((2, b) + t_region.shape[1:])) if regions else None
        sk = int(e.sinkhorn_iters)
        valid = self._content(g, l, t_tokens.shape[2], [f.shape[1] for f in feat_list or []])
        loss, parts = losses.esvit_loss(
            jnp.concatenate(views, axis=0), t_view, extra["center"], float(e.student_temp), tau_t,
            region_list, feat_list, t_region_2, t_tokens if regions else None, extra["center_grid"],
            sinkhorn_iters=sk, student_valid=valid[0], teacher_valid=valid[1])
        metrics = {"view_loss": parts["view"], "teacher_temp": tau_t}
        if float(e.koleo_weight) > 0:
            koleo = sum(losses.koleo_loss(p) for p in s_pooled.reshape((2, b, -1)))
            metrics["koleo"] = koleo
            loss = loss + float(e.koleo_weight) * koleo
        if self.mim:   # iBOT: the shared head on every patch token, the same crop's teacher targets
            loss, metrics, extra_patch = self._mim_term(params, teacher, s_tokens, t_tokens, batch["mim_mask"],
                                                        extra["center_patch"], tau_t, loss, metrics)
        new_extra = dict(extra, stats=stats,
                         ema_teacher=dict(extra["ema_teacher"], stats=jax.lax.stop_gradient(t_stats)),
                         center=losses.update_center(extra["center"], t_view, float(e.center_momentum)))
        if self.mim:
            new_extra["center_patch"] = extra_patch
        if regions:
            new_extra["center_grid"] = losses.update_center(extra["center_grid"], t_region_2,
                                                            float(e.center_momentum))
        metrics["loss"] = loss
        student_views = jax.lax.stop_gradient(views[0][:2])  # the global crops' (same resolution)
        metrics.update({f"view/{k}": v for k, v in losses.collapse_diagnostics(
            student_views, t_view, extra["center"], float(e.student_temp), tau_t,
            sinkhorn_iters=sk).items()})
        if regions:
            metrics["region_loss"] = parts["region"]
            if valid[1] is not None:
                metrics["region/content_tokens"] = jnp.mean(valid[1].astype(jnp.float32))
            metrics.update({f"region/{k}": v for k, v in losses.collapse_diagnostics(
                jax.lax.stop_gradient(jnp.stack(region_list[:2])), t_region_2, extra["center_grid"],
                float(e.student_temp), tau_t, kl=False, sinkhorn_iters=sk).items()})
        return loss, (metrics, new_extra)

    def _content(self, g: Array, l: Array, t_count: int, s_counts: list[int]):
        """esvit.region_min_std > 0: (per student crop (B, Ts_v), (2, B, Tt)) content-token masks
        (dino_losses.content_tokens) of the global crops g and local crops l; else (None, None)."""
        thr = float(self.cfg.region_min_std)
        if self.region_head is None or thr <= 0:
            return None, None
        b = g.shape[0]
        crops = [g[:, v] for v in range(g.shape[1])] + [l[:, v] for v in range(l.shape[1])]
        student = [losses.content_tokens(c, n, thr) for c, n in zip(crops, s_counts)]
        teacher = jnp.stack([losses.content_tokens(c, t_count, thr) for c in crops[:2]])
        return student, teacher.reshape(2, b, t_count)

    def _mim_term(self, params, teacher, s_tokens, t_tokens, mask, center, tau_t, loss, metrics):
        """iBOT's masked patch term added to the loss: -> (loss, metrics, the updated patch centre)."""
        e, b = self.cfg, mask.shape[0]
        s_patch = self.head.apply({"params": params["head"]}, s_tokens)                   # (2B, L, K)
        s_patch = s_patch.reshape((2, b) + s_patch.shape[1:])
        t_patch = jax.lax.stop_gradient(self.head.apply({"params": teacher["params"]["head"]}, t_tokens))
        sk = int(e.sinkhorn_iters)
        q = losses.teacher_probs(t_patch, center, tau_t, sk)
        mask = mask.swapaxes(0, 1)                                                       # (2, B, L)
        mim = losses.masked_patch_loss(s_patch, q, mask, float(e.student_temp))
        metrics = dict(metrics, mim_loss=mim, mim_masked=jnp.mean(mask.astype(jnp.float32)))
        metrics.update({f"patch/{k}": v for k, v in losses.collapse_diagnostics(
            jax.lax.stop_gradient(s_patch), t_patch, center, float(e.student_temp), tau_t, kl=False,
            sinkhorn_iters=sk).items()})
        loss = loss + float(e.mim_weight) * mim
        metrics["loss"] = loss
        return loss, metrics, losses.update_center(center, t_patch, float(e.center_momentum))

    def after_update(self, params: Params, extra: Extra, step: jax.Array) -> Extra:
        m = losses.ema_momentum(step, self.total_steps, float(self.cfg.momentum_teacher))
        teacher = dict(extra["ema_teacher"], params=losses.ema(extra["ema_teacher"]["params"], params, m))
        return dict(extra, ema_teacher=teacher)

    # ------------------------------------------------------------------ evaluation
    def backbone_variables(self, params: Params, extra: Extra) -> dict:
        """The EMA teacher's backbone: the network DINO and EsViT evaluate and hand on."""
        teacher = extra["ema_teacher"]
        return {"params": teacher["params"]["backbone"], **teacher["stats"]}

    def student_variables(self, params: Params, extra: Extra) -> dict:
        """The student's backbone (k-NN of the student: evals.NAME.network="student")."""
        return {"params": params["backbone"], **extra["stats"]}

    def _matched_views(self, variables: dict, example: dict, seed: int):
        """Two global views of one raw example (multi-crop with `seed`) and their final tokens."""
        image = transforms_lib.normalize(np.asarray(example["image"]), "none")
        crops = multicrop.multi_crop(image, np.random.default_rng(seed), self.crops)["global"]
        stats = {k: v for k, v in variables.items() if k != "params"}
        _, tokens, _ = self._backbone(self.teacher_model, variables["params"], stats, jnp.asarray(crops), False)
        return crops, np.asarray(tokens, np.float32)

    def correspondence_image(self, variables: dict, example: dict, seed: int = 0, top: int = 10) -> np.ndarray:
        """EsViT's picture for one raw example (uint8 image): two global views (multi-crop with
        `seed`) and the `top` best-matched tokens of the backbone with `variables` (e.g.
        `backbone_variables(params, extra)`, the teacher's) joined by lines. uint8 (H, W, 3)."""
        crops, tokens = self._matched_views(variables, example, seed)
        return viz.correspondence_picture(crops[0], crops[1], tokens[0], tokens[1],
                                          self.crops.mean, self.crops.std, top=top)

    def correspondence_ink(self, variables: dict, examples: list[dict], seed: int = 0, top: int = 10) -> float:
        """Over `examples` (example k viewed with seed + k): the fraction of each pair of views' `top`
        best-matched tokens that fall on ink in both views (viz.ink_match_fraction; strokes
        matched to strokes, not background to background)."""
        fractions = []
        for k, example in enumerate(examples):
            crops, tokens = self._matched_views(variables, example, seed + k)
            pairs = viz.top_matches(tokens[0], tokens[1], top)
            fractions.append(viz.ink_match_fraction(crops[0], crops[1], pairs, tokens.shape[1],
                                                    tokens.shape[1], self.crops.mean, self.crops.std))
        return float(np.mean(fractions))
