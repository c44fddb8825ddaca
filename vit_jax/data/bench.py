"""Images/s of a config's training input pipeline alone: no model, no device, no step.

    python -m vit_jax.data.bench --config configs/mnist5k/esvit.py:v,vit --workers 2 [--steps 30]
    python -m vit_jax.data.bench --config configs/quickstart.py --workers 1 --set data.prefetch=4

The pipeline is the one train.py runs (vit_jax.data.train_loader.for_config on the validated plan:
the config's source, its train transform with the method's own host step, e.g. EsViT's
multi-crop, its batch size and seed); `--workers` sets data.workers. After `--warmup` batches
it times `--repeats` windows of `--steps` batches each and prints one line per window, then last
`images_per_sec: X`, the median window's source images per second (a multi-crop example counts
once, however many crops it makes).
"""
from __future__ import annotations

import argparse
import ast
import statistics
import time
from typing import Any, Callable

from vit_jax import validate
from vit_jax.config_base import load_config_file
from vit_jax.data import train_loader


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text      # a bare string, e.g. folder:/data/jpegs


def apply_overrides(config, pairs: list[str]) -> None:
    """`key.sub=value` pairs onto the config; a key the config does not have is refused (a typo
    must not time the unchanged pipeline)."""
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise SystemExit(f"--set {pair!r}: use KEY=VALUE, e.g. --set data.prefetch=4")
        node = config
        *parents, last = key.split(".")
        for k in parents + [last]:
            if not hasattr(node, "keys") or k not in node:
                raise SystemExit(f"--set {pair!r}: the config has no key {key!r}")
            if k != last:
                node = node[k]
        node[last] = _literal(value)


def time_windows(draw: Callable[[], Any], batch: int, steps: int = 20, warmup: int = 3,
                 repeats: int = 3, log: Callable[[str], None] = print) -> list[float]:
    """Images/s of `repeats` windows of `steps` calls of `draw()` (one batch of `batch` each),
    after `warmup` calls that fill the loader's queues."""
    for _ in range(warmup):
        draw()
    rates = []
    for r in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            draw()
        rates.append(steps * batch / (time.perf_counter() - t))
        log(f"window {r + 1}/{repeats}: {rates[-1]:.1f} images/s ({steps} batches of {batch})")
    return rates


def measure(config, steps: int = 20, warmup: int = 3, repeats: int = 3,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Source images per second of `config`'s training pipeline: {"images_per_sec": median,
    "windows": [...], "batch": B}."""
    plan = validate.validate(config)
    pipe = train_loader.for_config(plan.train_source, plan.train_transform, config)
    try:
        rates = time_windows(lambda: next(pipe), config.batch_size, steps, warmup, repeats, log)
    finally:
        pipe.close()
    return {"images_per_sec": statistics.median(rates), "windows": rates, "batch": config.batch_size}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
    p.add_argument("--workers", type=int, default=None, help="data.workers (default: the config's)")
    p.add_argument("--steps", type=int, default=20, help="batches per timed window")
    p.add_argument("--warmup", type=int, default=3, help="batches drawn before timing")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, e.g. --set data.name=folder:/data/jpegs (repeatable)")
    a = p.parse_args(argv)
    config = load_config_file(a.config)
    apply_overrides(config, a.set)
    if a.workers is not None:
        config.data.workers = a.workers
    print(f"{a.config}: data {config.data.name}, batch {config.batch_size}, workers {config.data.workers}, "
          f"prefetch {config.data.prefetch}", flush=True)
    out = measure(config, a.steps, a.warmup, a.repeats)
    print(f"images_per_sec: {out['images_per_sec']:.1f}", flush=True)


if __name__ == "__main__":
    main()
