"""Our ViT train step against PyTorch's on the same CPU, alternating in one process.

    python benchmarks/train_step_vs_torch.py --model vit_small_patch16_224 --batch 32 --steps 3 --repeats 3

Ours: `vit_jax.bench`'s step (the jitted step train.py runs: supervised cross-entropy, AdamW with
global-norm clipping, donated state). PyTorch: transformers' ViTForImageClassification of the same
size with sdpa attention, cross-entropy, clip_grad_norm_ and torch.optim.AdamW, float32, eager.
Each repeat times `--steps` steps of ours, then `--steps` of PyTorch's (after warm-up steps of
both), so both see the same machine state; the medians over repeats and their ratio are printed,
last as `ratio_ours_over_torch: X` (images/s, > 1: ours faster). `--processes` steps ours in a
child process (each framework with its own allocator and threads), still alternating.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import statistics
import time

import jax
import numpy as np
import torch
import transformers

from vit_jax import aot, host_memory, sharding
from vit_jax.models.vit import VIT_SIZES

SIZES = {"vit_tiny_patch16_224": ("tiny", 16, 224), "vit_small_patch16_224": ("small", 16, 224),
         "vit_base_patch16_224": ("base", 16, 224)}


def ours(model: str, batch: int, size: int, classes: int, objective: str = "supervised"):
    """-> step(): one train step of ours under `objective`, blocking until it is done;
    step.num_params: the trained parameters' count; step.hlo_text(): the compiled step's HLO."""
    mesh = sharding.make_mesh(-1, 1, 1)
    built = aot.build_step(model, batch, size, mesh, objective=objective, dtype="float32",
                           num_classes=classes)
    state = built["init"](jax.random.PRNGKey(0))
    rs = np.random.default_rng(0)
    data = sharding.global_batch({"image": rs.standard_normal((batch, size, size, 3), dtype=np.float32),
                                  "label": rs.integers(0, classes, (batch,)).astype(np.int32)}, mesh)
    step = built["step"]
    box = [state]

    def run():
        box[0], metrics = step(box[0], data)
        jax.block_until_ready(metrics)
    run.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    run.hlo_text = lambda: step.lower(box[0], data).compile().as_text()   # for step_profile.py
    return run


def theirs(size_name: str, patch: int, batch: int, size: int, classes: int):
    """-> step(): one PyTorch train step of the same ViT."""
    width, depth, heads, mlp = VIT_SIZES[size_name]
    mlp = mlp or 4 * width
    cfg = transformers.ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                 intermediate_size=mlp, image_size=size, patch_size=patch,
                                 num_labels=classes, hidden_act="gelu", layer_norm_eps=1e-6,
                                 attn_implementation="sdpa")
    model = transformers.ViTForImageClassification(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return run


class InChild:
    """A run built and stepped in a process of its own (`--processes`): `factory(*args)` there,
    one window per request. Each framework then has its own allocator and thread pools, so
    neither's memory or spinning threads are in the other's way; the windows still alternate."""

    def __init__(self, factory, args: tuple, keep_host_memory: bool):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # daemon: ended with this process
        self.proc = ctx.Process(target=_serve, args=(child, factory, args, keep_host_memory), daemon=True)
        self.proc.start()
        self.num_params = self.conn.recv()

    def window(self, steps: int) -> float:
        self.conn.send(steps)
        return self.conn.recv()


def _serve(conn, factory, args: tuple, keep_host_memory: bool) -> None:
    if keep_host_memory:
        host_memory.keep_freed_memory()
    run = factory(*args)
    conn.send(getattr(run, "num_params", None))
    while True:
        try:
            steps = conn.recv()
        except EOFError:   # the parent is done
            return
        conn.send(window(run, steps))


def window(run, steps: int) -> float:
    if isinstance(run, InChild):
        return run.window(steps)
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - t0) / steps


def compare(runs: dict, warmup: int, steps: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per step of each run: `repeats` windows of `steps` steps, the runs alternating."""
    for run in runs.values():
        window(run, warmup)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(window(run, steps))
    return times


def report(times: dict[str, list[float]], batch: int, **fields) -> None:
    """Print the windows, the medians' images/s and `ratio_ours_over_<other>: X` for each other run."""
    med = {k: statistics.median(v) for k, v in times.items()}
    out = dict(fields, batch=batch, torch_threads=torch.get_num_threads(),
               step_s={k: [round(t, 3) for t in v] for k, v in times.items()},
               images_per_sec={k: round(batch / t, 3) for k, t in med.items()})
    print(json.dumps(out))
    for k in med:
        if k != "ours":
            print(f"ratio_ours_over_{k}: {med[k] / med['ours']:.3f}")


def one_step_args(doc: str) -> argparse.ArgumentParser:
    """The options of the scripts that look inside one of our steps (`ours`): model, batch,
    image size, objective."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--objective", default="supervised", help="supervised or mae")
    return p


def one_step(a: argparse.Namespace):
    """`ours` for the options of `one_step_args`, 1000 classes."""
    return ours(a.model, a.batch, a.image_size, 1000, objective=a.objective)


def harness_args(doc: str) -> argparse.ArgumentParser:
    """The options every side-by-side step benchmark takes (model, batch, windows, torch threads)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--keep_host_memory", action="store_true",
                   help="glibc keeps freed memory (vit_jax/host_memory.py, as vit_jax.main runs); "
                        "in one process PyTorch's side runs with it too; with --processes ours only")
    p.add_argument("--processes", action="store_true",
                   help="ours in a child process of its own, PyTorch's in this one (InChild)")
    p.add_argument("--torch_keep_host_memory", action="store_true",
                   help="with --processes: PyTorch's process keeps freed memory too (the same glibc settings)")
    return p


def ours_run(a: argparse.Namespace, *args, **kw):
    """`ours(*args, **kw)` here, or with --processes in a child process (`InChild`)."""
    if a.processes:
        return InChild(functools.partial(ours, **kw), args, a.keep_host_memory)
    return ours(*args, **kw)


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    a = p.parse_args(argv)
    here = (a.keep_host_memory and not a.processes) or (a.torch_keep_host_memory and a.processes)
    if here and not host_memory.keep_freed_memory():
        raise SystemExit("--keep_host_memory: not applied (needs glibc; VIT_JAX_KEEP_HOST_MEMORY=0 is set?)")
    if a.threads:
        torch.set_num_threads(a.threads)
    return a


def main(argv=None) -> None:
    p = harness_args(__doc__)
    p.add_argument("--classes", type=int, default=1000)
    a = parse(p, argv)
    size_name, patch, size = SIZES[a.model]
    runs = {"ours": ours_run(a, a.model, a.batch, size, a.classes),
            "torch": theirs(size_name, patch, a.batch, size, a.classes)}
    report(compare(runs, a.warmup, a.steps, a.repeats), a.batch, model=a.model)


if __name__ == "__main__":
    main()
