"""Data: sources (random-access datasets), host transforms, on-device mixup/cutmix.

pipeline.py (batching, sharding by process, resumable order) builds on these.
"""
from vit_jax.data import mixup, sources, transforms
from vit_jax.data.mixup import mixup_cutmix, one_hot_smooth
from vit_jax.data.sources import describe, digits, get_source, image_folder, mnist5k, tfds_source
from vit_jax.data.transforms import build as build_transform

__all__ = [
    "mixup", "sources", "transforms",
    "mixup_cutmix", "one_hot_smooth",
    "describe", "digits", "get_source", "image_folder", "mnist5k", "tfds_source",
    "build_transform",
]
