"""Optimizers, learning-rate schedules, weight-decay masks and the parameter EMA.

Everything here is a pure function of the config and the parameter tree, so the
training loop only sees one `optax.GradientTransformation`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Leaves that never get weight decay (the ViT/DeiT/MAE/Swin convention), by their own name:
# biases, norm scales, and the embeddings and tables that are not kernels. Anything 1-D is
# excluded too.
NO_DECAY_NAMES = frozenset({"bias", "scale", "pos_embed", "cls_token", "mask_token", "dist_token",
                            "relative_position_bias_table"})


def _warmup_then(decay: Callable[[jax.Array], jax.Array], base_lr: float, warmup_steps: int,
                 start_lr: float) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup from `start_lr` to `base_lr` over `warmup_steps`, then `decay(step)`."""
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = start_lr + (base_lr - start_lr) * step / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, warm, decay(step))
    return schedule


def _progress(step: jax.Array, warmup_steps: int, total_steps: int) -> jax.Array:
    """Fraction of the post-warmup steps done, in [0, 1]."""
    return jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int = 0,
                  end_lr: float = 0.0, start_lr: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup, then cosine from `base_lr` to `end_lr` at `total_steps`."""
    def decay(step):
        t = _progress(step, warmup_steps, total_steps)
        return end_lr + 0.5 * (base_lr - end_lr) * (1.0 + jnp.cos(jnp.pi * t))
    return _warmup_then(decay, base_lr, warmup_steps, start_lr)


def warmup_linear(base_lr: float, total_steps: int, warmup_steps: int = 0,
                  end_lr: float = 0.0, start_lr: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup, then linear from `base_lr` to `end_lr` at `total_steps`."""
    def decay(step):
        return base_lr + (end_lr - base_lr) * _progress(step, warmup_steps, total_steps)
    return _warmup_then(decay, base_lr, warmup_steps, start_lr)


def constant(base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr: float = 0.0,
             start_lr: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup, then `base_lr`."""
    del total_steps, end_lr
    return _warmup_then(lambda step: jnp.full_like(step, base_lr), base_lr, warmup_steps, start_lr)


OPTIMIZERS = ("adamw", "sgd", "lars")
SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "constant": constant}


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def decay_mask(params: Any, no_decay: frozenset[str] = NO_DECAY_NAMES) -> Any:
    """True where a leaf gets weight decay: arrays of 2+ dims whose name is not in `no_decay`."""
    def one(path, leaf):
        name = path_str(path).rsplit("/", 1)[-1]
        # "stage_2_cls_token" (CvT) is a cls token too
        named = any(name == n or name.endswith("_" + n) for n in no_decay)
        return not named and jnp.ndim(leaf) >= 2
    return jax.tree_util.tree_map_with_path(one, params)


def make_schedule(cfg, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """The lr schedule from `config.optim` (lr, schedule, warmup_steps, end_lr) over `total_steps`."""
    return SCHEDULES[cfg.optim.schedule](cfg.optim.lr, total_steps, cfg.optim.warmup_steps,
                                         cfg.optim.end_lr)


def layer_id(path: str, num_layers: int) -> int:
    """MAE/BEiT layer ids for layer-wise lr decay: embeddings 0, block i -> i + 1, the rest L + 1."""
    top = path.split("/", 1)[0]
    if top in ("embedding", "cls_token", "pos_embed", "dist_token", "mask_token"):
        return 0
    if top.startswith("blocks_"):
        return int(top.split("_")[1]) + 1
    return num_layers + 1


def layer_decay_multipliers(params: Any, num_layers: int, decay: float) -> Any:
    """lr factor decay ** (L + 1 - layer_id) per leaf of a ViT params tree (unscanned or scanned).

    Scanned blocks (a "blocks" subtree with a leading depth axis) get one factor per layer,
    shaped to broadcast over the leaf.
    """
    def one(path, leaf):
        name = path_str(path)
        if name.split("/", 1)[0] == "blocks":  # scan: leading axis is the layer
            f = decay ** (num_layers - np.arange(num_layers, dtype=np.float32))
            return f.reshape((num_layers,) + (1,) * (len(leaf.shape) - 1))
        return np.float32(decay ** (num_layers + 1 - layer_id(name, num_layers)))
    return jax.tree_util.tree_map_with_path(one, params)


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by a fixed factor (layer-wise lr decay; 0 freezes a leaf)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg, params: Any, total_steps: int,
                   lr_multipliers: Any | None = None) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW, SGD or LARS with the schedule, a decay mask, global-norm clipping and optional
    per-leaf lr factors (applied to the whole update, weight decay included, as MAE's param
    groups do). Returns the transformation and the schedule (to log the lr).
    """
    o = cfg.optim
    schedule = make_schedule(cfg, total_steps)
    mask = decay_mask(params)
    if o.name == "adamw":
        opt = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
    elif o.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=mask),
                          optax.sgd(schedule, momentum=o.b1 or None, nesterov=False))
    elif o.name == "lars":  # MAE's linear probe: trust ratio on kernels only, momentum b1
        kernels = jax.tree.map(lambda x: len(x.shape) > 1, params)
        opt = optax.lars(schedule, weight_decay=o.weight_decay, weight_decay_mask=mask,
                         trust_coefficient=o.trust_coefficient, trust_ratio_mask=kernels,
                         momentum=o.b1)
    else:  # validated earlier; kept for library callers
        raise ValueError(f"optim.name={o.name!r}: use one of {OPTIMIZERS}")
    if lr_multipliers is not None:
        opt = optax.chain(opt, scale_by_tree(lr_multipliers))
    if o.clip_norm and o.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    return opt, schedule


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leaf-wise."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
