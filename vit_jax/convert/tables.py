"""Declarative key tables: one table per family drives both import and export.

A `Row` pairs one of our flax modules (or a bare parameter) with its checkpoint counterpart
(a Hugging Face or torch key) and names a *kind*, which says how their tensors correspond.
The kinds' layouts (torch Linear (out, in) vs flax Dense (in, out), Conv2d (out, in, kh, kw)
vs flax Conv (kh, kw, in, out), LayerNorm weight vs scale, ...) are defined once, in `KINDS`,
in both directions, so a family file only lists names:

    import_rows(rows, Params(sd))        checkpoint tensors -> our params (forwards)
    export_rows(rows, {"params": p})     our params -> checkpoint tensors (backwards)

Applying a table backwards and then forwards is the identity (tests/test_convert_tables.py).
`scoped` and `repeat` put a table under prefixes (a block under blocks_i / encoder.layer.i),
and `block_rows` is the pre-norm transformer block every family shares: only its checkpoint
names differ between families, our side is always norm1, attn/{query,key,value,out}, norm2,
mlp/{fc1,fc2}.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from vit_jax.convert.weights import ConversionError, Params, flatten

Fn = Callable[[np.ndarray], np.ndarray]

QKV = ("query", "key", "value")


@dataclasses.dataclass(frozen=True)
class Row:
    """One entry of a key table.

    ours: our path, "/"-separated ("blocks_0/attn/query"); theirs: the checkpoint's module key,
    "."-separated and without the .weight / .bias suffix ("encoder.layer.0.attention.query");
    kind: a key of KINDS; collection: the flax collection the tensors live in.
    """
    ours: str
    theirs: str
    kind: str = "array"
    collection: str = "params"


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One tensor of a kind: our leaf name (appended to Row.ours; "" is the path itself) and
    the checkpoint suffix (appended to Row.theirs)."""
    ours: str | None            # None: no counterpart here (consumed on import, `fill` on export)
    theirs: str
    optional: bool = False      # e.g. a bias: absent in both trees when the layer has none
    to_ours: Fn | None = None
    to_theirs: Fn | None = None
    ndim: int | None = None     # to_ours applies to this rank only; another rank is kept as is,
                                # so that the shape check (weights.finish) names the key
    fill: Any = None


def _hwio(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)      # torch (out, in, kh, kw) -> flax (kh, kw, in, out)


def _oihw(w: np.ndarray) -> np.ndarray:
    return w.transpose(3, 2, 0, 1)      # flax (kh, kw, in, out) -> torch (out, in, kh, kw)


_BIAS = Leaf("bias", ".bias", optional=True)

# kind -> its tensors.  "token" / "table" are CLIP's unbatched class embedding (D,) and
# position table (1 + N, D), batched here as (1, 1, D) / (1, 1 + N, D).  "bn_stats" are a
# BatchNorm's running statistics (collection "batch_stats"); torch's step counter has no
# counterpart and is written as 0.
KINDS: dict[str, tuple[Leaf, ...]] = {
    "array": (Leaf("", ""),),
    "dense": (Leaf("kernel", ".weight", to_ours=np.transpose, to_theirs=np.transpose, ndim=2),
              _BIAS),
    "conv": (Leaf("kernel", ".weight", to_ours=_hwio, to_theirs=_oihw, ndim=4), _BIAS),
    "norm": (Leaf("scale", ".weight"), Leaf("bias", ".bias")),
    "token": (Leaf("", "", to_ours=lambda a: a[None, None], to_theirs=lambda a: a[0, 0], ndim=1),),
    "table": (Leaf("", "", to_ours=lambda a: a[None], to_theirs=lambda a: a[0], ndim=2),),
    "bn_stats": (Leaf("mean", ".running_mean"), Leaf("var", ".running_var"),
                 Leaf(None, ".num_batches_tracked", optional=True,
                      fill=np.zeros((), np.int64))),
}
# Not a tuple of leaves: one checkpoint tensor becomes three of ours (import_rows / export_rows).
FUSED_QKV = "fused_qkv"


def _path(row: Row, leaf: str) -> str:
    return f"{row.ours}/{leaf}" if leaf else row.ours


def scoped(rows: Iterable[Row], ours: str = "", theirs: str = "") -> tuple[Row, ...]:
    """`rows` with `ours` / `theirs` prepended to their paths and keys."""
    return tuple(dataclasses.replace(r, ours=ours + r.ours, theirs=theirs + r.theirs)
                 for r in rows)


def repeat(rows: Iterable[Row], n: int, ours: str, theirs: str) -> tuple[Row, ...]:
    """`rows` scoped under ours.format(i) / theirs.format(i) for i < n (a stack of blocks)."""
    rows = tuple(rows)
    return tuple(r for i in range(n) for r in scoped(rows, ours.format(i), theirs.format(i)))


def block_rows(qkv: Sequence[str] | str, out: str = "attention.output.dense",
               norms: tuple[str, str] = ("layernorm_before", "layernorm_after"),
               mlp: tuple[str, str] = ("intermediate.dense", "output.dense"),
               layer_scale: tuple[str, str] | None = None) -> tuple[Row, ...]:
    """A pre-norm transformer block (vit_jax.models.layers.Block) under checkpoint names.

    qkv: the query / key / value Linear keys, or one key of a fused (3D, D) projection.
    The defaults are the BERT-style names of Hugging Face's ViT, Swin and CvT; layer_scale:
    DINOv2's two per-channel scales (-> ls1/gamma, ls2/gamma).
    """
    if isinstance(qkv, str):
        attn = (Row("attn", qkv, FUSED_QKV),)
    else:
        attn = tuple(Row(f"attn/{name}", key, "dense") for name, key in zip(QKV, qkv))
    ls1, ls2 = ((Row("ls1/gamma", layer_scale[0]),), (Row("ls2/gamma", layer_scale[1]),)) \
        if layer_scale else ((), ())
    return (Row("norm1", norms[0], "norm"), *attn, Row("attn/out", out, "dense"), *ls1,
            Row("norm2", norms[1], "norm"), Row("mlp/fc1", mlp[0], "dense"),
            Row("mlp/fc2", mlp[1], "dense"), *ls2)


# ============================================================================ forwards

def _import_fused_qkv(p: Params, row: Row) -> None:
    """timm's fused qkv Linear (3D, D): rows are [q | k | v] -> separate query/key/value."""
    src = row.theirs
    w, b = p.sd.take(f"{src}.weight"), p.sd.take(f"{src}.bias", optional=True)
    for i, name in enumerate(QKV):
        if w is not None:
            d = w.shape[0] // 3
            p.put(f"{row.ours}/{name}/kernel", w[i * d:(i + 1) * d], f"{src}.weight",
                  np.transpose, 2)
        if b is not None:
            d = b.shape[0] // 3
            p.put(f"{row.ours}/{name}/bias", b[i * d:(i + 1) * d], f"{src}.bias")


def import_rows(rows: Iterable[Row], targets: Params | Mapping[str, Params]) -> None:
    """Apply a table forwards: take each row's checkpoint tensors from the targets' StateDict
    (missing ones are recorded there) and put them, in our layout, into the Params of the
    row's collection (`targets`: one Params for "params", or collection -> Params)."""
    if isinstance(targets, Params):
        targets = {"params": targets}
    for row in rows:
        if row.collection not in targets:
            raise ConversionError(f"no {row.collection!r} collection to put {row.ours} into.")
        p = targets[row.collection]
        if row.kind == FUSED_QKV:
            _import_fused_qkv(p, row)
            continue
        for leaf in KINDS[row.kind]:
            key = row.theirs + leaf.theirs
            value = p.sd.take(key, optional=leaf.optional)
            if leaf.ours is not None:
                p.put(_path(row, leaf.ours), value, key, leaf.to_ours, leaf.ndim)


# ============================================================================ backwards

def export_rows(rows: Iterable[Row], variables: Mapping[str, Mapping],
                what: str = "the model") -> dict[str, np.ndarray]:
    """Apply a table backwards: our variables ({collection: tree or flat "a/b" dict}) ->
    checkpoint tensors (float32 except the `fill` constants, C-contiguous, unprefixed keys
    as the rows give them).  A required leaf that is absent raises ConversionError."""
    flat = {c: flatten(tree) for c, tree in variables.items()}
    out: dict[str, np.ndarray] = {}

    def get(row: Row, path: str) -> np.ndarray:
        tree = flat.get(row.collection, {})
        if path not in tree:
            raise ConversionError(f"variables[{row.collection!r}] has no {path!r}; is this "
                                  f"{what}'s tree?")
        return np.asarray(tree[path], np.float32)

    for row in rows:
        if row.kind == FUSED_QKV:   # (D, 3D) columns [q | k | v] -> (3D, D) rows
            parts = [get(row, f"{row.ours}/{n}/kernel") for n in QKV]
            out[f"{row.theirs}.weight"] = np.concatenate(parts, axis=1).T
            if f"{row.ours}/query/bias" in flat.get(row.collection, {}):
                out[f"{row.theirs}.bias"] = np.concatenate(
                    [get(row, f"{row.ours}/{n}/bias") for n in QKV])
            continue
        for leaf in KINDS[row.kind]:
            key = row.theirs + leaf.theirs
            if leaf.ours is None:
                out[key] = leaf.fill
                continue
            path = _path(row, leaf.ours)
            if leaf.optional and path not in flat.get(row.collection, {}):
                continue
            value = get(row, path)
            out[key] = leaf.to_theirs(value) if leaf.to_theirs is not None else value
    # np.array, not ascontiguousarray, which turns 0-d arrays (num_batches_tracked) into 1-d.
    return {k: np.array(v, order="C") for k, v in out.items()}


__all__ = ["FUSED_QKV", "KINDS", "QKV", "Leaf", "Row", "block_rows", "export_rows", "import_rows", "repeat",
           "scoped"]
