"""The train state: one plain dict pytree, made here for train.py, bench.py and the tests.

    step       int32 scalar, updates done
    params     what the optimizer trains
    opt_state  the optimizer's state
    extra      method state gradients do not train (BatchNorm statistics, EMA teachers, centres)
    ema        (only when config.ema_decay > 0) the parameter EMA
    rng        the run's key; step s uses fold_in(rng, s)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

State = dict[str, Any]


def create(params: Any, extra: Any, tx: optax.GradientTransformation, rng: jax.Array,
           ema: bool = False) -> State:
    """The state at step 0 around given params and extra (jit it with out_shardings to place it)."""
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "extra": extra, "rng": jax.random.fold_in(rng, 1)}
    if ema:
        state["ema"] = params
    return state


def init_state(objective: Any, tx: optax.GradientTransformation, rng: jax.Array, batch: dict,
               ema: bool = False) -> State:
    """A fresh state of `objective` from one example batch of shape (1, ...): objective.init(rng,
    batch), then `create`. Pure: works under jax.jit and jax.eval_shape. A frozen teacher's
    weights are zeros here; put_frozen_extra fills them in on the host."""
    params, extra = objective.init(rng, batch)
    return create(params, extra, tx, rng, ema)


def put_frozen_extra(objective: Any, extra: Any) -> Any:
    """`extra` with the objective's host-given entries (objective.frozen_extra, e.g. EVA's
    teacher) in place of init's placeholders; ValueError when their trees or shapes differ."""
    if not objective.frozen_extra:
        return extra
    extra = dict(extra)
    for key, value in objective.frozen_extra.items():
        want = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), extra.get(key))
        got = jax.tree.map(lambda x: (tuple(np.shape(x)), jnp.dtype(np.asarray(x).dtype)), value)
        if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
            raise ValueError(f"{type(objective).__name__}.frozen_extra[{key!r}] does not match the "
                             f"placeholder init gives extra[{key!r}] (a teacher converted with scan=True?)")
        extra[key] = value
    return extra
