"""Backbone registry: `create(name, **overrides) -> flax.linen.Module`.

Names are timm-style ("vit_base_patch16_224"). Besides the registered names, generic ViT
names vit_{size}_patch{p}_{img} (also deit_...) are parsed, e.g. "vit_small_patch8_64",
with size in tiny/small/base/large/huge/giant.

Other backbone files (swin.py, cvt.py, cct.py, ...) add theirs at import time with
`register(name, constructor)`, where `constructor()` returns the module with that name's
defaults; overrides are applied afterwards with `module.clone(**overrides)`, after checking
every key is a field of the module.  Such files are imported at the bottom of this file.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import importlib
import importlib.util
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.vit import ViT

Constructor = Callable[[], nn.Module]

_REGISTRY: dict[str, Constructor] = {}
# (compiled regex, factory(match) -> module) for generic names; tried in order after exact names.
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], nn.Module]]] = []


def register(name: str, constructor: Constructor, *, overwrite: bool = False) -> Constructor:
    """Register `constructor` (called with no arguments) under `name`; returns it (decorator-friendly)."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = constructor
    return constructor


def register_pattern(pattern: str, factory: Callable[[re.Match[str]], nn.Module]) -> None:
    """Register a family of names: `factory(match)` builds the module for a full match of `pattern`."""
    _PATTERNS.append((re.compile(pattern), factory))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob, e.g. list_models("vit_*")."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_fields(module_or_cls: nn.Module | type) -> list[str]:
    """The configurable fields of a backbone (what `create` accepts as overrides)."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def _lookup(name: str) -> nn.Module:
    if name in _REGISTRY:
        return _REGISTRY[name]()
    for regex, factory in _PATTERNS:
        m = regex.fullmatch(name)
        if m:
            return factory(m)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown model {name!r}.{hint} See vit_jax.models.list_models() for the registered "
        f"names; generic ViT names vit_{{size}}_patch{{p}}_{{img}} also work "
        f"(size in {'/'.join(_VIT_SIZES)}).")


def _normalise(overrides: dict[str, Any]) -> dict[str, Any]:
    # Configs carry dtypes as strings ("bfloat16") and sizes as lists; modules want dtypes / tuples.
    out = dict(overrides)
    for k in ("dtype", "param_dtype"):
        if isinstance(out.get(k), str):
            out[k] = jnp.dtype(out[k])
    for k, v in out.items():
        if isinstance(v, list):
            out[k] = tuple(v)
    return out


def create(name: str, **overrides: Any) -> nn.Module:
    """Build a backbone by name; keyword overrides change any field (e.g. num_classes=10)."""
    module = _lookup(name)
    overrides = _normalise(overrides)
    fields = model_fields(module)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"Unknown override(s) {unknown} for {name!r} ({type(module).__name__}); "
                         f"valid fields: {fields}.")
    return module.clone(**overrides) if overrides else module


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


# ---------------------------------------------------------------------- ViT family

# size -> (width, depth, num_heads, mlp_dim); None = 4 * width, so a width override scales the MLP.
_VIT_SIZES: dict[str, tuple[int, int, int, int | None]] = {
    "tiny": (192, 12, 3, None),
    "small": (384, 12, 6, None),
    "base": (768, 12, 12, None),
    "large": (1024, 24, 16, None),
    "huge": (1280, 32, 16, None),
    "giant": (1408, 40, 16, 6144),  # ViT-g/14: not 4x
}


def vit(size: str, patch: int, image_size: int, **kw: Any) -> ViT:
    """A standard ViT (1000 classes, class token, learned pos-emb) of a named size."""
    width, depth, heads, mlp = _VIT_SIZES[size]
    return ViT(patch_size=patch, width=width, depth=depth, num_heads=heads, mlp_dim=mlp,
               image_size=image_size, num_classes=1000, **kw)


register_pattern(r"(?:vit|deit)_(" + "|".join(_VIT_SIZES) + r")_patch(\d+)_(\d+)",
                 lambda m: vit(m.group(1), int(m.group(2)), int(m.group(3))))

for _name, _args in {
    "vit_tiny_patch16_224": ("tiny", 16, 224),
    "vit_small_patch16_224": ("small", 16, 224),
    "vit_small_patch32_224": ("small", 32, 224),
    "vit_base_patch16_224": ("base", 16, 224),
    "vit_base_patch32_224": ("base", 32, 224),
    "vit_base_patch16_384": ("base", 16, 384),
    "vit_large_patch16_224": ("large", 16, 224),
    "vit_large_patch14_224": ("large", 14, 224),
    "vit_huge_patch14_224": ("huge", 14, 224),
    "vit_giant_patch14_224": ("giant", 14, 224),
    # DeiT (non-distilled) is the same architecture as ViT-Ti/S/B at 224.
    "deit_tiny_patch16_224": ("tiny", 16, 224),
    "deit_small_patch16_224": ("small", 16, 224),
    "deit_base_patch16_224": ("base", 16, 224),
}.items():
    register(_name, functools.partial(vit, *_args))


# ---------------------------------------------------------------------- other backbones

# Each file registers its names on import; missing files are skipped (errors inside are not).
for _mod in ("swin", "cvt", "cct"):
    if importlib.util.find_spec(f"{__name__}.{_mod}") is not None:
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["ViT", "create", "register", "register_pattern", "list_models", "model_fields",
           "param_count", "vit"]
