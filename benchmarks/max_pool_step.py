"""What max_pool_2d's backward buys: the CCT-4/3x2 gradient step on 28-px digits (the shipped
configs/mnist5k/cct.py model, batch 128) and the 28 -> 14 pool's backward alone, with flax's
nn.max_pool (XLA's select-and-scatter) against vit_jax.models.max_pool, alternating in one run.

    python benchmarks/max_pool_step.py [--batch 128] [--repeats 5]

Prints the median milliseconds of each and their ratio.
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import cct as cct_module, registry
from vit_jax.models.max_pool import max_pool_2d

POOLS = {"flax nn.max_pool": lambda a, k, s, p: nn.max_pool(a, (k, k), (s, s), ((p, p), (p, p))),
         "vit_jax max_pool_2d": max_pool_2d}


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def step_fn(pool, batch: int):
    cct_module.max_pool_2d = pool   # the tokenizer looks the name up when it is traced
    model = registry.create("cct_4_3x2_28", in_channels=1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 28, 28, 1)), jnp.float32)
    labels = jnp.arange(batch) % 10
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def loss(p):
        logits, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()
    grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(grad(params))
    cct_module.max_pool_2d = max_pool_2d
    return grad, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    h = jnp.asarray(np.random.default_rng(1).normal(size=(a.batch, 28, 28, 64)), jnp.float32)
    g = jnp.ones((a.batch, 14, 14, 64), jnp.float32)
    steps = {name: step_fn(pool, a.batch) for name, pool in POOLS.items()}
    backs = {name: jax.jit(lambda x, dy, pool=pool: jax.vjp(lambda t: pool(t, 3, 2, 1), x)[1](dy)[0])
             for name, pool in POOLS.items()}
    step_ms = {name: [] for name in POOLS}
    back_ms = {name: [] for name in POOLS}
    for _ in range(3):   # alternate, so load from elsewhere falls on both
        for name in POOLS:
            grad, params = steps[name]
            step_ms[name].append(median_ms(grad, params, repeats=a.repeats))
            back_ms[name].append(median_ms(backs[name], h, g, repeats=a.repeats))
    for name in POOLS:
        print(f"{name:22s} CCT-4/3x2 grad step b{a.batch}: {np.median(step_ms[name]):7.1f} ms   "
              f"pool backward (b{a.batch}, 28x28x64): {np.median(back_ms[name]):6.1f} ms")
    old, new = (np.median(step_ms[n]) for n in POOLS)
    old_b, new_b = (np.median(back_ms[n]) for n in POOLS)
    print(f"speed-up: step {old / new:.2f}x, pool backward {old_b / new_b:.2f}x")


if __name__ == "__main__":
    main()
