"""Where a ViT train step's time goes on this CPU: its parts, ours (jitted JAX) against PyTorch's.

    python benchmarks/step_parts_vs_torch.py --batch 32 --repeats 5 [--keep_host_memory]

Shapes of ViT-S/16 at 224 px (197 tokens, width 384, 6 heads, MLP 1536). Each part runs forward and
backward (gradients of a sum) on both sides, except the forward-only matmul; the optimizer part is one AdamW update of 22M float32
parameters (optax.adamw against torch.optim.AdamW). Backward passes start from a fixed random
cotangent, the same on both sides. Prints one JSON line per part with the medians
(ms) and ours / torch's time (< 1: ours faster). `--keep_host_memory`: glibc keeps freed memory
(vit_jax/host_memory.py, as vit_jax.main runs; torch's side in this process runs with it too), so
no part pays for faulting its temporaries in again on every call.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from vit_jax import host_memory
from vit_jax.models.layers import Block, MlpBlock, dot_product_attention

D, H, MLP, L = 384, 6, 1536, 197


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def jax_grad_fn(f, *args):
    """-> a thunk running value-and-grad of <f(*args), r> w.r.t. every arg, blocking; r is a fixed
    random cotangent (a plain sum would let XLA turn the backward matmuls into reductions)."""
    shape = jax.eval_shape(f, *args)
    r = jnp.asarray(np.random.default_rng(1).standard_normal(shape.shape, dtype=np.float32))
    g = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a) * r), argnums=tuple(range(len(args)))))
    return lambda: jax.block_until_ready(g(*args))


def jax_fn(f, *args):
    """-> a thunk running jit(f)(*args) forward only, blocking."""
    g = jax.jit(f)
    return lambda: jax.block_until_ready(g(*args))


def torch_grad_fn(f, *args):
    args = [a.requires_grad_(True) for a in args]
    with torch.no_grad():
        r = torch.from_numpy(np.random.default_rng(1).standard_normal(tuple(f(*args).shape), dtype=np.float32))

    def run():
        for a in args:
            a.grad = None
        (f(*args) * r).sum().backward()
    return run


def parts(b: int) -> dict:
    rs = np.random.default_rng(0)
    x = rs.standard_normal((b, L, D), dtype=np.float32)
    q, k, v = (rs.standard_normal((b, L, H, D // H), dtype=np.float32) for _ in range(3))
    tq, tk, tv = (torch.from_numpy(a.transpose(0, 2, 1, 3).copy()) for a in (q, k, v))
    scale = (D // H) ** -0.5

    def explicit(q, k, v):
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale, axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", w, v)

    ln = nn.LayerNorm(epsilon=1e-6)
    ln_p = ln.init(jax.random.key(0), x[:1])
    t_ln = torch.nn.LayerNorm(D, eps=1e-6)
    w1 = rs.standard_normal((D, MLP), dtype=np.float32) * 0.02
    w2 = rs.standard_normal((MLP, D), dtype=np.float32) * 0.02
    tw1, tw2 = torch.from_numpy(w1.T.copy()), torch.from_numpy(w2.T.copy())

    mlp = MlpBlock(hidden_dim=MLP)
    mlp_p = mlp.init(jax.random.key(0), x[:1])
    block = Block(num_heads=H, mlp_dim=MLP)
    block_p = block.init(jax.random.key(0), x[:1])
    cfg = transformers.ViTConfig(hidden_size=D, num_attention_heads=H, intermediate_size=MLP,
                                 layer_norm_eps=1e-6, attn_implementation="sdpa")
    t_block = transformers.models.vit.modeling_vit.ViTLayer(cfg)

    jx = jnp.asarray(x)
    x2, tx2 = jx.reshape(-1, D), torch.from_numpy(x.reshape(-1, D).copy())
    h = rs.standard_normal((b * L, MLP), dtype=np.float32)
    out = {
        # the MLP's first product alone, (B*L, D) @ (D, MLP): the matmul library against MKL / oneDNN
        "matmul (B*L, 384) @ (384, 1536), forward": (
            jax_fn(jnp.matmul, x2, jnp.asarray(w1)),
            lambda: torch.matmul(tx2, tw1.T)),
        "matmul (B*L, 384) @ (384, 1536), forward and backward": (
            jax_grad_fn(jnp.matmul, x2, jnp.asarray(w1)),
            torch_grad_fn(lambda x, a: x @ a.T, tx2.clone(), tw1.clone())),
        "gelu (exact) on (B*L, 1536), forward and backward": (
            jax_grad_fn(lambda h: jax.nn.gelu(h, approximate=False), jnp.asarray(h)),
            torch_grad_fn(torch.nn.functional.gelu, torch.from_numpy(h.copy()))),
        "attention core (fused jax.nn.dot_product_attention / sdpa)": (
            jax_grad_fn(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale), *map(jnp.asarray, (q, k, v))),
            torch_grad_fn(torch.nn.functional.scaled_dot_product_attention, tq.clone(), tk.clone(), tv.clone())),
        "attention core (ours: layers.dot_product_attention / sdpa)": (
            jax_grad_fn(lambda q, k, v: dot_product_attention(q, k, v, scale=scale), *map(jnp.asarray, (q, k, v))),
            torch_grad_fn(torch.nn.functional.scaled_dot_product_attention, tq.clone(), tk.clone(), tv.clone())),
        "attention core (token-major einsum + softmax / sdpa)": (
            jax_grad_fn(explicit, *map(jnp.asarray, (q, k, v))),
            torch_grad_fn(torch.nn.functional.scaled_dot_product_attention, tq.clone(), tk.clone(), tv.clone())),
        "layer norm": (
            jax_grad_fn(lambda x: ln.apply(ln_p, x), jx),
            torch_grad_fn(t_ln, torch.from_numpy(x.copy()))),
        "mlp (ours: layers.MlpBlock / dense, gelu, dense)": (
            jax_grad_fn(lambda p, x: mlp.apply(p, x), mlp_p, jx),
            torch_grad_fn(lambda x, a, c: torch.nn.functional.gelu(x @ a.T) @ c.T, torch.from_numpy(x.copy()), tw1, tw2)),
        "mlp (3-D jnp matmuls / dense, gelu, dense)": (
            jax_grad_fn(lambda x, a, c: jax.nn.gelu(x @ a, approximate=False) @ c, jx, jnp.asarray(w1), jnp.asarray(w2)),
            torch_grad_fn(lambda x, a, c: torch.nn.functional.gelu(x @ a.T) @ c.T, torch.from_numpy(x.copy()), tw1, tw2)),
        "one encoder block": (
            jax_grad_fn(lambda p, x: block.apply(p, x), block_p, jx),
            torch_grad_fn(t_block, torch.from_numpy(x.copy()))),
    }
    return out


def optimizer_parts(n: int = 22_050_664) -> tuple:
    params = {"w": jnp.zeros((n,), jnp.float32)}
    grads = {"w": jnp.full((n,), 1e-3, jnp.float32)}
    tx = optax.adamw(1e-3, weight_decay=0.05)
    state = [tx.init(params), params]

    @jax.jit
    def update(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    def ours():
        state[1], state[0] = update(state[1], state[0], grads)
        jax.block_until_ready(state[1])
    tp = torch.nn.Parameter(torch.zeros(n))
    tp.grad = torch.full((n,), 1e-3)
    opt = torch.optim.AdamW([tp], lr=1e-3, weight_decay=0.05)
    return ours, opt.step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--keep_host_memory", action="store_true",
                   help="glibc keeps freed memory (both sides, as vit_jax.main runs)")
    a = p.parse_args(argv)
    if a.keep_host_memory and not host_memory.keep_freed_memory():
        raise SystemExit("--keep_host_memory: not applied (needs glibc on Linux)")
    todo = parts(a.batch)
    todo["AdamW update, 22M params"] = optimizer_parts()
    for name, (ours, theirs) in todo.items():
        t_ours, t_torch = median_ms(ours, a.repeats), median_ms(theirs, a.repeats)
        print(json.dumps({"part": name, "ours_ms": round(t_ours, 2), "torch_ms": round(t_torch, 2),
                          "ours_over_torch": round(t_ours / t_torch, 3)}), flush=True)


if __name__ == "__main__":
    main()
