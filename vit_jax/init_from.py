"""config.init_from: a fresh run starts from the weights of another vit_jax run, once, on the host.

The rule, for every method: a source run of the SAME objective is continued (all its params are
loaded, e.g. MAE's decoder too); any other source gives its backbone, as its objective declares
it (`backbone_variables`: a supervised ViT's params, an MAE or EVA encoder, a probe's backbone,
a DINO / EsViT run's EMA teacher), to this run's backbone (params[objective.backbone_key]).
Leaves are matched by path and shape; the head and fc_norm of the new model keep their fresh
init; a learned position embedding that the source did not have (MAE's fixed sincos) starts
from the sincos values, and one of another grid size is resized. A DeiT student (distillation
token) starts from a plain ViT's backbone with a fresh distillation token, head_dist and
distillation row of the position embedding (and a plain ViT from a DeiT student drops them).
Only "params" are loaded (BatchNorm statistics start fresh).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from vit_jax import runs
from vit_jax.errors import ConfigError, UserError
from vit_jax.models import posemb
from vit_jax.trees import path_str, replace_subtree, subtree

# Parts of a backbone that a new task is expected to bring itself.
FRESH = ("head", "fc_norm", "head_dist", "dist_token")


def _flatten(tree: Any) -> dict[str, Any]:
    return {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def merge(target: Any, source: dict) -> tuple[Any, dict[str, list[str]]]:
    """`target` with every leaf that `source` has (same path) replaced by the source's value.

    Returns the new tree and a report {"loaded", "fresh", "unused"}. Raises ValueError naming
    the leaves when the architectures do not match.
    """
    src = _flatten(source)
    report: dict[str, list[str]] = {"loaded": [], "fresh": [], "unused": []}
    problems = []

    def one(path, leaf):
        name = path_str(path)
        shape = tuple(leaf.shape)
        if name in src:
            value = np.asarray(src[name])
            if value.shape == shape:
                report["loaded"].append(name)
                return value.astype(leaf.dtype)
            if name == "pos_embed" and value.shape[-1] == shape[-1]:
                report["loaded"].append(name + " (resized)")
                fresh = np.zeros(shape, leaf.dtype) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf
                return _resize_posemb(value, np.asarray(fresh))
            problems.append(f"{name}: source {value.shape} vs model {shape}")
            return leaf
        if name == "pos_embed":  # the source used fixed sincos position embeddings
            report["fresh"].append(name + " (sincos)")
            return _sincos_like(shape).astype(leaf.dtype)
        if name.split("/", 1)[0] in FRESH:
            report["fresh"].append(name)
            return leaf
        problems.append(f"{name}: missing in the source")
        return leaf

    merged = jax.tree_util.tree_map_with_path(one, target)
    if problems:
        raise ValueError("init_from: the source backbone does not fit this model: " + "; ".join(problems[:8])
                         + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else "")
                         + ". Use the same model_name and model overrides as the pre-training run.")
    used = {n.split(" ")[0] for n in report["loaded"]}
    report["unused"] = sorted(set(src) - used)
    return merged, report


def _grid(n: int) -> tuple[int, int]:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"cannot infer a square patch grid from {n} position rows")
    return side, side


def _sincos_like(shape: tuple[int, ...]) -> np.ndarray:
    """MAE's fixed table for a (1, n, D) pos-emb, a zero row for each prefix token."""
    _, n, d = shape
    try:
        prefix = _prefix_rows(n)
    except ValueError:
        raise ValueError(f"cannot build sincos position embeddings of shape {shape}") from None
    grid = _grid(n - prefix)
    pe = posemb.sincos_2d(grid[0], grid[1], d)
    return np.pad(pe, ((0, 0), (prefix, 0), (0, 0))).reshape(shape)


def _prefix_rows(n: int) -> int:
    """The prefix rows (0, 1: class token, 2: class and distillation tokens) of a (1, n, D)
    position embedding over a square grid (unique: k^2 + 1 and k^2 + 2 are never squares)."""
    for prefix in (1, 0, 2):
        if _is_square(n - prefix):
            return prefix
    raise ValueError(f"cannot infer a square patch grid from {n} position rows")


def _resize_posemb(value: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """The source's pos-emb `value` on the grid and prefix of `fresh` (the new model's init):
    the grid rows resized, the prefix rows both have copied, the new model's extra ones fresh."""
    p_src, p_new = _prefix_rows(value.shape[1]), _prefix_rows(fresh.shape[1])
    grid = posemb.resize_pos_embed(value[:, p_src:], _grid(fresh.shape[1] - p_new), 0,
                                   old_grid=_grid(value.shape[1] - p_src))
    keep = min(p_src, p_new)
    prefix = np.concatenate([value[:, :keep], fresh[:, keep:p_new]], axis=1)
    return np.concatenate([prefix, np.asarray(grid)], axis=1).astype(fresh.dtype)


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n ** 0.5)) ** 2 == n


def prepare(objective: Any, abstract_params: Any, source: str) -> Callable[[Any], Any]:
    """Reads the run in `source` and checks, on `abstract_params` (shapes only, before any compile),
    that it fits `objective`'s params by the module docstring's rule. Returns `params -> params`
    with the source's weights merged in. Raises ConfigError naming the source and the leaves."""
    try:
        src = runs.load_run(source)
    except UserError as e:
        raise ConfigError(f"init_from={source}: {e}") from e
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ConfigError(f"init_from={source} is not a finished vit_jax run: {e}") from e
    same = src.config.objective == objective.config.objective
    key = () if same else objective.backbone_key
    weights = src.params if same else src.backbone_variables["params"]
    try:
        merge(subtree(abstract_params, key), weights)
    except ValueError as e:
        raise ConfigError(f"{e} (source: {source}, a {src.config.objective} run of "
                          f"{src.config.model_name})") from e

    def apply(params: Any, log: bool = True) -> Any:
        host = jax.device_get(params)
        merged, report = merge(subtree(host, key), weights)
        if log and jax.process_index() == 0:
            which = "all params" if same else f"the backbone of the {src.config.objective} run"
            print(f"init_from {source} ({which}): loaded {len(report['loaded'])} arrays; fresh: "
                  f"{', '.join(report['fresh']) or 'none'}; unused: {', '.join(report['unused']) or 'none'}",
                  flush=True)
        return replace_subtree(host, key, merged)

    return apply


def load(objective: Any, params: Any, source: str, log: bool = True) -> Any:
    """`params` (host or device arrays of `objective`'s run) with the weights of the run in
    `source` merged in by the module docstring's rule. Raises ConfigError when they do not fit."""
    return prepare(objective, jax.eval_shape(lambda p: p, params), source)(params, log)
