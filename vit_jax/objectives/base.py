"""The Objective interface: what a method is, in six public methods and three declarations.

The training loop (train.py) calls `init`, `loss`, `after_update` and, through the evaluators
named in the config (vit_jax/evaluate), `eval_metrics` and `backbone_variables`; the data
pipeline calls `prepare_example`. Everything else a run needs is in the config and handled once
by the loop: init_from (vit_jax/init_from.py), freezing (optim.freeze) and layer-wise decay
(optim.layer_decay), durations (vit_jax/durations.py).
"""
from __future__ import annotations

import copy

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vit_jax import sharding
from vit_jax.data.info import DataInfo
from vit_jax.trees import subtree

Params = Any
Extra = Any  # non-trainable method state: BatchNorm statistics, EMA teachers, centers ...
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def section(config: mlc.ConfigDict, key: str, defaults: dict) -> mlc.ConfigDict:
    """`config.<key>` laid over `defaults`: a config without the section gets the defaults; a key
    the method does not know is an error naming the valid ones."""
    out = mlc.ConfigDict(copy.deepcopy(dict(defaults)))   # placeholders are not shared
    given = config.get(key)
    if given is not None:
        unknown = sorted(set(given.keys()) - set(out.keys()))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config.{key}; valid: {sorted(out.keys())}.")
        for k in given.keys():
            out[k] = given[k]
    return out


def backbone_kwargs(config: mlc.ConfigDict, info: DataInfo, **fixed: Any) -> dict:
    """Model overrides for a backbone: the config's, what the method fixes (`fixed`, e.g.
    num_classes=0 for a feature extractor), then what the data decides (classes, size, channels)."""
    kw = dict(config.model)
    kw.update(fixed)
    kw.setdefault("num_classes", info.num_classes)
    kw.setdefault("image_size", tuple(info.image_shape[:2]))
    kw.setdefault("in_channels", info.image_shape[2])
    if config.dtype != "float32":
        kw.setdefault("dtype", jnp.dtype(config.dtype))
    return kw


def init_module(module: nn.Module, rng: jax.Array, images: jax.Array) -> tuple[Params, dict]:
    """(params, its other collections, e.g. {"batch_stats"}) of a backbone initialised on images."""
    variables = dict(module.init({"params": rng}, images, train=False))
    return variables.pop("params"), variables


def apply_module(module: nn.Module, params: Params, collections: dict, images: jax.Array, train: bool,
                 rng: jax.Array | None = None, **kwargs: Any) -> tuple[jax.Array, dict, dict]:
    """`module` on images with {"params": params, **collections} -> (out, aux, new collections);
    in training the collections (BatchNorm statistics) are updated from the batch. kwargs go to
    the module's call (e.g. a ViT's patch_mask and mask_token)."""
    variables = {"params": params, **collections}
    rngs = {"dropout": rng} if rng is not None else {}
    if train and collections:
        (out, aux), new = module.apply(variables, images, train=True, rngs=rngs, mutable=list(collections),
                                       **kwargs)
        return out, aux, dict(new)
    out, aux = module.apply(variables, images, train=train, rngs=rngs, **kwargs)
    return out, aux, collections


def no_head(config: mlc.ConfigDict, method: str) -> None:
    """Raises when config.model asks a headless method's backbone for a classification head."""
    if config.model.get("num_classes", 0) != 0:
        raise ValueError(f"{method}'s backbone has no classification head; remove config.model.num_classes.")


def require_classes(info: DataInfo, method: str) -> None:
    """Raises unless the data has at least two classes (one class trains to accuracy 1.0 on nothing)."""
    if info.num_classes < 2:
        raise ValueError(f"{method} needs labelled data with at least 2 classes; this dataset has "
                         f"{info.num_classes} (an image folder needs one subfolder per class, e.g. "
                         "root/cat/*.jpg, root/dog/*.jpg).")


class Objective:
    """A method: its modules, how to initialise them, and its loss.

    Declarations (set in the subclass or its __init__):
        defaults: the keys and default values of the method's config section, config.<name>
            (name = config.objective); `self.cfg` is that section laid over the defaults.
        backbone: the network downstream tasks use (a flax module called as
            `out, aux = backbone.apply(variables, images, train=False)`).
        backbone_key: where `params` keeps the backbone's parameters (() = all of params).
        frozen_extra: entries of `extra` given on the host (a frozen teacher's weights): a fresh
            run puts them in place of the same-shaped placeholders `init` returns, so large
            constants never enter a compiled program; a resumed run restores them.
        weight_decay_rule: which parameters get weight decay (optim.DECAY_RULES): "timm" (not biases,
            norms, position embeddings and class tokens: supervised, MAE, EVA) or "dino" (all but
            biases and 1-D tensors, as facebookresearch/dino's get_params_groups).
        held: None, or (PATTERN, S): the parameters whose path matches the regex PATTERN get no
            optimizer step at all for the first S steps (optim.hold_until), as torch skips a
            parameter whose .grad is None (DINO's frozen last layer).

    `__init__(config, info)` builds the modules and raises ValueError for a bad method config,
    before anything is compiled.
    """
    defaults: ClassVar[dict[str, Any]] = {}
    backbone_key: ClassVar[tuple[str, ...]] = ()
    backbone: nn.Module
    frozen_extra: dict[str, Any] = {}
    weight_decay_rule: ClassVar[str] = "timm"
    held: tuple[str, int] | None = None

    def __init__(self, config: mlc.ConfigDict, info: DataInfo):
        self.config, self.info = config, info
        self.cfg = section(config, config.objective, self.defaults)

    @property
    def batch_shards(self) -> int:
        """Into how many contiguous blocks of rows config.mesh splits the global batch over the
        devices (data * fsdp): a loss that pairs rows (mixup) pairs them within a block."""
        mesh = self.config.get("mesh")
        return sharding.batch_shard_count(mesh) if mesh else 1

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, Extra]:
        """Initial (params, extra) from one example batch of shape (1, ...)."""
        raise NotImplementedError

    def loss(self, params: Params, extra: Extra, batch: Batch, rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, tuple[Metrics, Extra]]:
        """Scalar loss to minimise and (metrics dict of scalars, updated extra). Pure; runs in jit."""
        raise NotImplementedError(f"the {self.config.objective!r} objective does not train: "
                                  "set total_steps=0")

    def eval_metrics(self, params: Params, extra: Extra, batch: Batch) -> Metrics:
        """Per-example metrics (name -> (B,)) on an eval batch, averaged over the real rows by the
        "metrics" evaluator. Default: none."""
        return {}

    def after_update(self, params: Params, extra: Extra, step: jax.Array) -> Extra:
        """Called after each optimizer update (EMA teachers). Default: no change."""
        return extra

    def prepare_example(self, example: dict, rng: np.random.Generator) -> dict:
        """Host-side, per training example, after the data transform (numpy): what the method
        draws per image outside jit, e.g. EVA's block-wise patch mask. Deterministic given `rng`.
        Default: unchanged."""
        return example

    def backbone_variables(self, params: Params, extra: Extra) -> dict:
        """The variables of `backbone` ({"params": ...[, "batch_stats": ...]}) that evaluation,
        probes, teachers and init_from read: by default params[backbone_key]."""
        return {"params": subtree(params, self.backbone_key)}
