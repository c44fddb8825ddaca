"""What an evaluator sees of a run: its config, mesh, objective, data and where to write."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from vit_jax.data import sources, train_loader


@dataclasses.dataclass
class EvalContext:
    config: Any
    mesh: jax.sharding.Mesh
    workdir: str
    objective: Any                   # the run's vit_jax.objectives.Objective
    train_source: Any
    eval_source: Any | None
    eval_transform: Callable | None  # deterministic: example -> example
    is_main: bool
    source_kwargs: dict = dataclasses.field(default_factory=dict)
    _sources: dict = dataclasses.field(default_factory=dict)

    def source(self, split: str) -> Any | None:
        """The data source of `split` of config.data.name ("" = the eval split; None when that is
        "" too: evaluation off)."""
        data = self.config.data
        split = split or data.eval_split
        if not split:
            return None
        if split == data.eval_split and self.eval_source is not None:
            return self.eval_source
        if split == data.train_split:
            return self.train_source
        if split not in self._sources:
            self._sources[split] = sources.get_source(data.name, split, **self.source_kwargs)
        return self._sources[split]

    def batches(self, source: Any, batch_size: int | None = None):
        """One ordered pass over `source` through the eval transform, in padded global batches of
        `batch_size` (config.eval_batch_size) with a "mask", made by the run's loader
        (data.loader: threads or grain workers); this process' rows."""
        return train_loader.eval_batches(source, self.eval_transform, self.config,
                                         batch_size or self.config.eval_batch_size,
                                         jax.process_index(), jax.process_count())
