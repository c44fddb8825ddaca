"""Backbones: `create(name, **overrides) -> flax.linen.Module` and the model families.

    from vit_jax import models
    m = models.create("swin_tiny_patch4_window7_224", num_classes=10, width=48)

The registry (create, register, register_pattern, list_models, model_fields, RENAMED_FIELDS,
upgrade_fields) lives in registry.py; each family file (vit.py, swin.py, cvt.py, cct.py, resnet.py) imports
it and registers its names when imported, so importing the families here fills the registry.
Names are timm-style; generic ViT names vit_{size}_patch{p}_{img} (also deit_...) are parsed,
e.g. "vit_small_patch8_64", with size in tiny/small/base/large/huge/giant.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.registry import (RENAMED_FIELDS, create, list_models, model_fields,
                                     register, register_pattern, upgrade_fields)
from vit_jax.models.vit import ViT, vit
from vit_jax.models import cct, cvt, resnet, swin  # noqa: E402,F401  (importing them registers their names)
from vit_jax.models.cct import CCT
from vit_jax.models.resnet import ResNet


def param_count(module: nn.Module, image_shape: Sequence[int]) -> int:
    """Number of trainable parameters ("params" collection) for NHWC images of `image_shape`.

    image_shape is (H, W, C) or (B, H, W, C).  Uses jax.eval_shape: nothing is allocated.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    variables = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables.get("params", {})))


__all__ = ["CCT", "RENAMED_FIELDS", "ResNet", "ViT", "create", "list_models", "model_fields", "param_count",
           "register", "register_pattern", "upgrade_fields", "vit"]
