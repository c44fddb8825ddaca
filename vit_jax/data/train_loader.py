"""The loaders a config asks for: `data.loader` = "threads" | "grain", for training and evaluation.

Both give the same batches for the same (seed, step), so a run can switch loaders and resume:
  threads  pipeline.TrainPipeline: a thread pool in this process (data.workers threads), one
           batch per task. No start-up cost; scales while PIL / numpy release the GIL
           (JPEG decoding) but not for small images, where Python holds it.
  grain    grain_pipeline.GrainTrainPipeline: data.workers worker processes (grain's
           mp_prefetch), each with data.read_threads threads. Starts in seconds (the workers
           import the library); scales with processes.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from vit_jax.data import grain_pipeline, pipeline

LOADERS = ("threads", "grain")


def for_config(source: Sequence[dict], transform: pipeline.Transform, config: Any,
               process_index: int = 0, process_count: int = 1):
    """The training pipeline of `config` (train.py and vit_jax.data.bench build it here):
    config.batch_size, seed, data.loader, data.workers, data.read_threads, data.prefetch and
    data.drop_remainder."""
    d = config.data
    loader = d.get("loader", "threads")   # .get: a workdir's config.json may predate the key
    drop = bool(d.get("drop_remainder", False))
    if loader == "grain":
        return grain_pipeline.GrainTrainPipeline(
            source, transform, config.batch_size, config.seed, process_index, process_count,
            d.workers, d.get("read_threads", 1), d.prefetch, drop_remainder=drop)
    if loader == "threads":
        return pipeline.TrainPipeline(source, transform, config.batch_size, config.seed, process_index,
                                      process_count, d.workers, d.prefetch, drop_remainder=drop)
    raise ValueError(f"data.loader={loader!r}: use one of {LOADERS}")


def eval_batches(source: Sequence[dict], transform: pipeline.Transform, config: Any, batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One ordered, padded pass over `source` (rows masked by "mask") with `config`'s loader:
    the same batches from data.workers threads or grain worker processes."""
    d = config.data
    loader = d.get("loader", "threads")
    if loader == "grain":
        return grain_pipeline.eval_batches(source, transform, batch_size, process_index, process_count,
                                           d.workers, d.get("read_threads", 1), d.prefetch)
    if loader == "threads":
        return pipeline.eval_batches(source, transform, batch_size, process_index, process_count, d.workers)
    raise ValueError(f"data.loader={loader!r}: use one of {LOADERS}")
