"""Data: sources (random-access datasets), host transforms, on-device mixup/cutmix, and
the pipeline (batching, sharding by process, resumable order) built on them.
"""
from vit_jax.data import mixup, pipeline, sources, transforms
from vit_jax.data.mixup import mixup_cutmix, one_hot_smooth
from vit_jax.data.sources import describe, digits, get_source, image_folder, mnist5k, tfds_source
from vit_jax.data.transforms import build as build_transform

__all__ = [
    "mixup", "pipeline", "sources", "transforms",
    "mixup_cutmix", "one_hot_smooth",
    "describe", "digits", "get_source", "image_folder", "mnist5k", "tfds_source",
    "build_transform",
]
