"""What a run ran on, recorded in its workdir: one line of environment.jsonl per (re)start.

The image decoder is part of the data: PIL built against different libjpeg(-turbo) versions, or
OpenCV, decode the same JPEG to different pixels, so the PIL and libjpeg versions are recorded
beside the library versions, the devices and the data loader.
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from typing import Any

import jax
from PIL import features as pil_features

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pillow", "grain",
            "tensorflow-datasets", "vit_jax_lab")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(config: Any) -> dict[str, Any]:
    """{time, python, packages, image decoder, devices, processes, data loader} of this process."""
    data = config.get("data", {}) if hasattr(config, "get") else {}
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "image_decoder": {"pil": _version("pillow"),
                          "libjpeg_turbo": pil_features.version("libjpeg_turbo"),
                          "jpg": pil_features.version("jpg"), "zlib": pil_features.version("zlib")},
        "devices": sorted({d.device_kind for d in jax.devices()}),
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "data_loader": {k: data.get(k) for k in ("loader", "workers", "read_threads", "prefetch",
                                                 "device_prefetch", "decode", "wire")},
    }


def last_start(path: str) -> dict[str, Any] | None:
    """The newest readable line of an environment.jsonl, or None (no file, or none readable)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:   # a start killed while writing its line
            continue
    return None


def decoder_change(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """'pil 10.4.0 -> 11.0.0; ...' for the decoder versions that differ between two starts, or ''."""
    old = (before or {}).get("image_decoder")
    if not old:
        return ""
    new = now["image_decoder"]
    return "; ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))
