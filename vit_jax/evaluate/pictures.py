"""Evaluators that write pictures into the workdir (process 0), for methods that can draw them.

    "reconstruction"   an MAE-style grid of eval images (objective.reconstruction_image)
    "correspondences"  EsViT's matched tokens of two views (objective.correspondence_image), and
                       over `ink_images` test images the share of the `top` matches that fall on
                       ink in both views (objective.correspondence_ink): eval/<name>/ink_top<top>

Each writes <workdir>/<name>_<step>.png; only the ink share is a metric. The objective brings the
drawing; a type needs the method named in NEEDS and is refused at validation otherwise.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from vit_jax import viz
from vit_jax.evaluate.context import EvalContext

RECONSTRUCTION = dict(num_images=8, split="")
CORRESPONDENCES = dict(index=0, seed=0, top=10, ink_images=100, split="")
NEEDS = {"reconstruction": "reconstruction_image", "correspondences": "correspondence_image"}


def correspondence_needs(spec) -> tuple[str, ...]:
    return (NEEDS["correspondences"],) + (("correspondence_ink",) if int(spec.ink_images) else ())


def check(name: str, spec) -> None:
    for key in ("num_images", "top"):
        if key in spec and int(spec[key]) < 1:
            raise ValueError(f"evals.{name}.{key}={spec[key]} must be >= 1")
    if "ink_images" in spec and int(spec.ink_images) < 0:
        raise ValueError(f"evals.{name}.ink_images={spec.ink_images} must be >= 0 (0: no ink measure)")


def _path(ctx: EvalContext, name: str, step: int) -> str:
    return os.path.join(ctx.workdir, f"{name}_{int(step):06d}.png")


def make_reconstruction(name: str, spec, ctx: EvalContext):
    def run(state, step):
        source = ctx.source(spec.split)
        if not ctx.is_main or source is None:
            return {}
        # images spread over the split (sorted sets would otherwise show one class)
        picks = np.unique(np.linspace(0, len(source) - 1, int(spec.num_images)).astype(int))
        images = np.stack([np.asarray(ctx.eval_transform(dict(source[int(i)]))["image"]) for i in picks])
        params, extra = jax.device_get((state["params"], state["extra"]))
        viz.save_png(ctx.objective.reconstruction_image(params, extra, images), _path(ctx, name, step))
        return {}
    return run


def make_correspondences(name: str, spec, ctx: EvalContext):
    def run(state, step):
        source = ctx.source(spec.split)
        if not ctx.is_main or source is None:
            return {}
        params, extra = jax.device_get((state["params"], state["extra"]))
        variables = ctx.objective.backbone_variables(params, extra)
        picture = ctx.objective.correspondence_image(variables, dict(source[int(spec.index)]),
                                                     seed=int(spec.seed), top=int(spec.top))
        viz.save_png(picture, _path(ctx, name, step))
        if not int(spec.ink_images):
            return {}
        picks = np.unique(np.linspace(0, len(source) - 1, int(spec.ink_images)).astype(int))
        ink = ctx.objective.correspondence_ink(variables, [dict(source[int(i)]) for i in picks],
                                               seed=int(spec.seed), top=int(spec.top))
        return {f"eval/{name}/ink_top{int(spec.top)}": ink}
    return run
