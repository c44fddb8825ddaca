"""Optimizers, learning-rate schedules, weight-decay masks and the parameter EMA.

Everything here is a pure function of the config and the parameter tree, so the
training loop only sees one `optax.GradientTransformation`.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.trees import path_str, replace_subtree, subtree

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


def warmup_step(base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr: float = 0.0,
                start_lr: float = 0.0, boundaries: tuple[float, ...] = (0.5, 0.75),
                factor: float = 0.1) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup, then `base_lr` times `factor` once per boundary passed; `boundaries` are
    fractions of `total_steps` counted from step 0 (He et al.'s CIFAR ResNets: lr / 10 at 32k and
    48k of 64k iterations = (0.5, 0.75)). `end_lr` is unused (the steps set the floor)."""
    del end_lr
    edges = jnp.asarray([b * total_steps for b in boundaries], jnp.float32)

    def decay(step):
        return base_lr * factor ** jnp.sum(step >= edges)
    return _warmup_then(decay, base_lr, warmup_steps, start_lr)


def constant(base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr: float = 0.0,
             start_lr: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup, then `base_lr`."""
    del total_steps, end_lr
    return _warmup_then(lambda step: jnp.full_like(step, base_lr), base_lr, warmup_steps, start_lr)


def cosine_decay_value(start: float, end: float, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Cosine from `start` at step 0 towards `end` at `total_steps`, no warmup (DINO's wd schedule).

    wd(t) = end + 0.5 * (start - end) * (1 + cos(pi * t / T)), with t clipped to [0, T]. DINO
    evaluates it at t = 0..T-1, so the last training step sits just short of `end`, as here.
    """
    # Same closed form as the lr cosine with no warmup; reused so the two cannot drift apart.
    return warmup_cosine(start, total_steps, warmup_steps=0, end_lr=end)


# DINO's epsilon in clip_coef = clip / (norm + 1e-6); kept as is so the numbers match its runs.
PER_PARAM_CLIP_EPS = 1e-6


def clip_by_param_norm(max_norm: float, stacked: Any | None = None) -> optax.GradientTransformation:
    """Clips each parameter tensor on its own to L2 norm `max_norm` (DINO's `clip_gradients`).

    For each tensor g: coef = max_norm / (||g||_2 + 1e-6); g is multiplied by coef only where
    coef < 1, so tensors under the threshold pass through bit for bit. optax has no exact
    equivalent: `clip_by_block_rms` bounds the RMS (norm / sqrt(size)) and has no epsilon.

    `stacked`: None, or a tree like the updates of bools; True marks a leaf whose leading axis
    stacks one tensor per layer (nn.scan's "blocks"), each slice then clipped on its own, as
    DINO's unscanned torch model would clip each layer's tensor.
    """
    def one(g: jax.Array, per_slice: bool = False) -> jax.Array:
        # The norm in float32 at least: a bfloat16 sum of squares loses the small leaves.
        sq = jnp.square(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
        axes = tuple(range(1, g.ndim)) if per_slice and g.ndim >= 1 else None
        norm = jnp.sqrt(jnp.sum(sq, axis=axes, keepdims=axes is not None))
        coef = max_norm / (norm + PER_PARAM_CLIP_EPS)
        return jnp.where(coef < 1.0, g * coef.astype(g.dtype), g)

    def update(updates, state, params=None):
        del params
        if stacked is None:
            return jax.tree.map(one, updates), state
        return jax.tree.map(lambda g, s: one(g, bool(s)), updates, stacked), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def scanned_mask(params: Any) -> Any:
    """True for leaves under a "blocks" subtree (ViT with scan=True: leading depth axis), at any
    depth of the tree so a backbone nested inside a method's params (student/backbone) counts."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "blocks" in path_str(path).split("/")[:-1], params)


OPTIMIZERS = ("adamw", "sgd", "lars")
SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "constant": constant, "step": warmup_step}
CLIP_MODES = ("global", "per_param")


DECAY_RULES = ("timm", "dino")


def decay_mask(params: Any, no_decay: frozenset[str] = NO_DECAY_NAMES, rule: str = "timm") -> Any:
    """True where a leaf gets weight decay. "timm": arrays of 2+ dims whose name is not in
    `no_decay`; "dino": every array but biases and 1-D tensors (DINO/EsViT decay the class token,
    the position embedding, Swin's relative-position table and the weight-norm g)."""
    if rule not in DECAY_RULES:
        raise ValueError(f"weight-decay rule {rule!r}: use one of {DECAY_RULES}")

    def one(path, leaf):
        name = path_str(path).rsplit("/", 1)[-1]
        if rule == "dino":  # (our weight-norm g is (K,); torch's weight_g is (K, 1), so decayed)
            return name == "g" or (not (name == "bias" or name.endswith("_bias")) and jnp.ndim(leaf) > 1)
        # "stage_2_cls_token" (CvT) is a cls token too
        named = any(name == n or name.endswith("_" + n) for n in no_decay)
        return not named and jnp.ndim(leaf) >= 2
    return jax.tree_util.tree_map_with_path(one, params)


def make_schedule(cfg, total_steps: int, warmup_steps: int | None = None, cooldown_steps: int = 0
                  ) -> Callable[[jax.Array], jax.Array]:
    """The lr schedule from `config.optim` over `total_steps`: `schedule` (cosine | linear |
    constant | step), `lr`, `end_lr`, `start_lr` (where the linear warmup starts: timm's
    warmup_lr), and for "step" its `step_boundaries` and `step_factor`. warmup_steps and
    cooldown_steps as resolved by vit_jax/durations.py (None: optim.warmup_steps, 0 when unset);
    the last `cooldown_steps` hold the schedule's final value (timm's cooldown_epochs at min_lr)."""
    o = cfg.optim
    if warmup_steps is None:
        warmup_steps = o.get("warmup_steps") or 0
    extra = {}
    if o.schedule == "step":
        extra = dict(boundaries=tuple(o.get("step_boundaries", (0.5, 0.75))),
                     factor=float(o.get("step_factor", 0.1)))
    return SCHEDULES[o.schedule](o.lr, max(total_steps - cooldown_steps, 1), warmup_steps, o.end_lr,
                                 float(o.get("start_lr", 0.0)), **extra)


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


def path_matches(params: Any, pattern: str, key: str) -> Any:
    """Bools like `params`: the leaf's path ("backbone/blocks_0/attn/query/kernel") matches the
    regex `pattern` from its start. ValueError naming `key` for a bad regex or no match."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{key}={pattern!r} is not a regular expression: {e}") from None
    matches = jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.match(path_str(p))), params)
    if not any(jax.tree.leaves(matches)):
        paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        raise ValueError(f"{key}={pattern!r} matches no parameter; paths look like {paths[:3]}")
    return matches


def lr_factors(o, params: Any, backbone_key: tuple[str, ...] = (),
               num_layers: int | None = None) -> Any | None:
    """Per-leaf lr factors from `config.optim` (None: 1 everywhere), applied to the whole update:
    layer-wise decay (o.layer_decay < 1) over the backbone at params[backbone_key] with
    `num_layers` blocks (the rest of params keeps 1), and 0 for every leaf whose path
    ("backbone/blocks_0/attn/query/kernel") matches the regex o.freeze from its start.
    Uses names and shapes only (abstract params are fine). Raises ValueError for a bad setting."""
    factors = None
    if o.layer_decay < 1.0:
        if num_layers is None:
            raise ValueError("optim.layer_decay uses ViT layer ids; this backbone has no flat block "
                             "list yet: set optim.layer_decay=1.0")
        decayed = layer_decay_multipliers(subtree(params, backbone_key), num_layers, o.layer_decay)
        factors = replace_subtree(jax.tree.map(lambda _: np.float32(1.0), params), backbone_key, decayed)
    if o.get("freeze"):
        frozen = path_matches(params, o.freeze, "optim.freeze")
        base = factors if factors is not None else jax.tree.map(lambda _: np.float32(1.0), params)
        factors = jax.tree.map(lambda m, f: np.float32(0.0) if m else f, frozen, base)
    return factors


def make_weight_decay(cfg, total_steps: int) -> float | Callable[[jax.Array], jax.Array]:
    """`optim.weight_decay`, or a cosine to `optim.weight_decay_end` over the run when that is >= 0.

    A plain float stays a float when the schedule is off so the optimizer state keeps its old
    structure (no extra step counter) and existing checkpoints still restore.
    """
    o = cfg.optim
    if o.weight_decay_end < 0:
        return o.weight_decay
    return cosine_decay_value(o.weight_decay, o.weight_decay_end, total_steps)


class HoldState(NamedTuple):
    count: jax.Array   # steps seen, held or not
    inner: Any


def hold_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`inner`, but for its first `steps` calls the updates are 0 and its state does not change.

    torch's optimizers skip a parameter whose .grad is None (DINO's frozen last layer): no weight
    decay, no moment update, and its own step count, hence Adam's bias correction, starts when the
    parameter first gets a gradient. Wrapped around a per-group optimizer, this does the same.
    """
    def init(params):
        return HoldState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        active = state.count >= steps
        new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_inner, state.inner)
        return new_updates, HoldState(optax.safe_int32_increment(state.count), new_inner)
    return optax.GradientTransformation(init, update)


def _shifted(value: float | Callable[[jax.Array], jax.Array], steps: int):
    """A schedule read `steps` later (a held group's own count starts at 0 when it starts)."""
    return (lambda count: value(count + steps)) if callable(value) else value


def _base_optimizer(o, schedule, wd, decay_rule: str) -> optax.GradientTransformation:
    """AdamW, SGD or LARS of config.optim `o` with its decay mask, for any (sub)tree of params."""
    mask = functools.partial(decay_mask, rule=decay_rule)  # the objective's weight_decay_rule
    # Every weight-decay schedule below counts its own updates from 0, in step with the lr
    # schedule's counter, so wd(t) and lr(t) refer to the same step t.
    if o.name == "adamw":  # decoupled: p -= lr(t) * wd(t) * p, as torch AdamW (DINO) does
        return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=mask)
    if o.name == "sgd":
        return optax.chain(optax.add_decayed_weights(wd, mask=mask),
                           optax.sgd(schedule, momentum=o.b1 or None, nesterov=False))
    if o.name == "lars":  # MAE's linear probe: trust ratio on kernels only, momentum b1
        # optax.lars feeds weight_decay to add_decayed_weights, which accepts a schedule.
        return optax.lars(schedule, weight_decay=wd, weight_decay_mask=mask,
                          trust_coefficient=o.trust_coefficient,
                          trust_ratio_mask=lambda p: jax.tree.map(lambda x: len(x.shape) > 1, p),
                          momentum=o.b1)
    raise ValueError(f"optim.name={o.name!r}: use one of {OPTIMIZERS}")  # validated earlier


def make_optimizer(cfg, params: Any, total_steps: int, lr_multipliers: Any | None = None,
                   warmup_steps: int | None = None, decay_rule: str = "timm",
                   held: tuple[str, int] | None = None, cooldown_steps: int = 0
                   ) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW, SGD or LARS with the schedule, a decay mask (constant or cosine weight decay),
    global-norm or per-parameter clipping and optional per-leaf lr factors (applied to the whole
    update, weight decay included, as MAE's param groups do). Returns the transformation and the
    schedule (to log the lr).

    held: (PATTERN, S), the objective's `held` declaration: the leaves whose path
    ("head/last_layer/v") matches the regex PATTERN from its start form their own optimizer group,
    skipped entirely for the first S steps (`hold_until`); the global lr and weight-decay
    schedules continue where they are at step S.
    """
    o = cfg.optim
    schedule = make_schedule(cfg, total_steps, warmup_steps, cooldown_steps)
    wd = make_weight_decay(cfg, total_steps)
    opt = _base_optimizer(o, schedule, wd, decay_rule)
    if held is not None and int(held[1]) > 0:
        steps = int(held[1])
        labels = jax.tree.map(lambda m: "held" if m else "rest", path_matches(params, held[0], "held"))
        later = hold_until(_base_optimizer(o, _shifted(schedule, steps), _shifted(wd, steps), decay_rule),
                           steps)
        opt = optax.multi_transform({"rest": opt, "held": later}, labels)
    if lr_multipliers is not None:
        opt = optax.chain(opt, scale_by_tree(lr_multipliers))
    if o.clip_norm and o.clip_norm > 0:
        if o.clip_mode == "global":
            clip = optax.clip_by_global_norm(o.clip_norm)
        elif o.clip_mode == "per_param":
            clip = clip_by_param_norm(o.clip_norm, stacked=scanned_mask(params))
        else:  # validated earlier; kept for library callers
            raise ValueError(f"optim.clip_mode={o.clip_mode!r}: use one of {CLIP_MODES}")
        opt = optax.chain(clip, opt)
    return opt, schedule


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leaf-wise."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
