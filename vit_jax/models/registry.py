"""Backbone registry: `create(name, **overrides) -> flax.linen.Module`.

Names are timm-style ("vit_base_patch16_224").  Each family file (vit.py, swin.py, cvt.py)
imports this module and registers its names at import time, with `register(name,
constructor)` for exact names, where `constructor()` returns the module with that name's
defaults, or `register_pattern(regex, factory, hint=...)` for generic names such as
vit_{size}_patch{p}_{img}.  `create` applies overrides with `module.clone(**overrides)` after
checking every key is a field of the module.  This file imports no family: the arrows point
from the families to the registry, and models/__init__.py imports both.

Field names are one vocabulary across families (ViT's names are the reference);
RENAMED_FIELDS maps the names older versions used to the current ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

Constructor = Callable[[], nn.Module]

# old field name -> current name (Swin's embed_dim; CvT's per-stage names).
RENAMED_FIELDS: dict[str, str] = {
    "embed_dim": "width",
    "dims": "widths",
    "heads": "num_heads",
    "cls_token": "class_token",
    "mlp_ratios": "mlp_ratio",
}

_REGISTRY: dict[str, Constructor] = {}
# (compiled regex, factory(match) -> module, hint for error messages); tried in order after exact names.
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], nn.Module], str]] = []


def register(name: str, constructor: Constructor, *, overwrite: bool = False) -> Constructor:
    """Register `constructor` (called with no arguments) under `name`; returns it (decorator-friendly)."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = constructor
    return constructor


def register_pattern(pattern: str, factory: Callable[[re.Match[str]], nn.Module], *,
                     hint: str = "") -> None:
    """Register a family of names: `factory(match)` builds the module for a full match of `pattern`.

    `hint` describes the names for the unknown-name error, e.g. "vit_{size}_patch{p}_{img}".
    """
    _PATTERNS.append((re.compile(pattern), factory, hint))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob, e.g. list_models("vit_*")."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_fields(module_or_cls: nn.Module | type) -> list[str]:
    """The configurable fields of a backbone (what `create` accepts as overrides)."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def upgrade_fields(overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Rename old field names (RENAMED_FIELDS) to current ones, e.g. in an old config.json.

    Returns (the renamed dict, in the same order, and notes "old -> new" for every renamed key).
    ValueError when a dict holds both an old name and its new one (which to keep is unclear).
    """
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in overrides.items():
        new = RENAMED_FIELDS.get(key)
        if new is None:
            out[key] = value
            continue
        if new in overrides:
            raise ValueError(f"model fields {key!r} and {new!r} are both set; {key!r} is the old "
                             f"name of {new!r}: keep only {new!r}.")
        out[new] = value
        notes.append(f"{key} -> {new}")
    return out, notes


def _lookup(name: str) -> nn.Module:
    if name in _REGISTRY:
        return _REGISTRY[name]()
    for regex, factory, _ in _PATTERNS:
        m = regex.fullmatch(name)
        if m:
            return factory(m)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    generic = "; ".join(h for _, _, h in _PATTERNS if h)
    generic = f"; generic names also work: {generic}" if generic else ""
    raise ValueError(f"Unknown model {name!r}.{hint} See vit_jax.models.list_models() for the "
                     f"registered names{generic}.")


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
    for old in overrides:
        if old in RENAMED_FIELDS:
            new = RENAMED_FIELDS[old]
            raise ValueError(f"model field {old!r} is now {new!r}: use --config.model.{new}=... "
                             f"(or {new}=... in Python); vit_jax.models.upgrade_fields renames "
                             "the fields of an old config.")
    module = _lookup(name)
    overrides = _normalise(overrides)
    fields = model_fields(module)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"Unknown override(s) {unknown} for {name!r} ({type(module).__name__}); "
                         f"valid fields: {fields}.")
    return module.clone(**overrides) if overrides else module


__all__ = ["RENAMED_FIELDS", "create", "list_models", "model_fields", "register",
           "register_pattern", "upgrade_fields"]
