"""Reading weight files and the machinery every converter shares.

Files: safetensors (numpy, or torch for bfloat16), torch.load(weights_only=True) state dicts,
Hugging Face folders (single or sharded).  Bookkeeping: `StateDict` hands out checkpoint
tensors and reports missing / unused keys; `Params` collects the flax leaves built from them
(which tensor goes where, in which layout: the key tables of tables.py); `finish` applies
overrides and checks every name and shape against the module's own tree.  All errors are
`ConversionError`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from vit_jax.errors import UserError
from vit_jax.models.posemb import sincos_2d
from vit_jax.models.mae import MAE
from vit_jax.models.vit import ViT, scan_params

Variables = dict[str, Any]
PathLike = str | os.PathLike

# Fixed sin-cos embeddings are recomputed here; a stored copy must agree to this tolerance.
_POSEMB_ATOL = 1e-4


class ConversionError(UserError, ValueError):
    """A checkpoint cannot be converted (bad keys, shapes or unsupported settings)."""


class MissingFileError(ConversionError, FileNotFoundError):
    """A file or folder a conversion reads is absent (a FileNotFoundError too, as it was before)."""


# ============================================================================ reading files

def _to_numpy(t: Any) -> np.ndarray:
    """torch tensor / numpy array -> float32 (for floating) numpy array."""
    if hasattr(t, "detach"):  # torch tensor; bf16/fp16 have no exact numpy twin everywhere
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        t = t.numpy()
    a = np.asarray(t)
    # jnp.issubdtype also knows ml_dtypes' bfloat16, which numpy alone does not call floating.
    return a.astype(np.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a


def read_json(path: Path) -> Any:
    """The JSON in `path` (config.json, a sharded index); ConversionError naming the file when it
    is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError as e:
        raise MissingFileError(f"{path} does not exist.") from e
    except OSError as e:
        raise ConversionError(f"{path} cannot be read ({e.strerror or e}).") from e
    except ValueError as e:  # JSONDecodeError (its message has the position), or not UTF-8
        raise ConversionError(f"{path} is not valid JSON ({e}; truncated?); re-download it or "
                              "write the folder again (save_pretrained).") from e


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        try:
            tensors = load_file(str(path))
        except TypeError:
            # numpy has no bfloat16: read through torch instead (torch is optional, so imported
            # only here).
            from safetensors.torch import load_file as load_torch
            tensors = load_torch(str(path))
    except FileNotFoundError as e:
        raise MissingFileError(f"{path} does not exist.") from e
    except (SafetensorError, OSError) as e:  # a damaged, truncated or foreign file
        raise ConversionError(f"{path} is not a readable safetensors file ({e}); re-download it "
                              "or write it again (save_pretrained, safetensors.save_file).") from e
    return {k: _to_numpy(v) for k, v in tensors.items()}


def torch_load(path: Path) -> Any:
    """torch.load(weights_only=True): tensors and plain containers only, never arbitrary objects."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is optional for safetensors folders
        raise ConversionError(f"reading {path} needs PyTorch (pip install torch); "
                              "safetensors files do not.") from e
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise MissingFileError(f"{path} does not exist.") from e
    except Exception as e:  # torch reports a damaged file as any of UnpicklingError, EOFError,
        text = str(e)       # RuntimeError (zip), IndexError...: every one is about the file
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in text:
            raise ConversionError(
                f"{path} holds Python objects besides tensors (e.g. the argparse Namespace or "
                "optimizer state of a training checkpoint), which weights_only=True refuses to "
                "unpickle. If you trust the file, extract the weights once with "
                "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth').") from e
        found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = found.group(1) if found else (text.strip().splitlines() or [""])[0][:200]
        raise ConversionError(f"{path} is not a readable PyTorch file ({type(e).__name__}"
                              f"{': ' + reason if reason else ''}); re-download it or write it "
                              "again with torch.save.") from e


def flatten_torch_state(obj: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} does not hold a state dict (got {type(obj).__name__}).")
    bad = [k for k, v in obj.items() if not (hasattr(v, "detach") or isinstance(v, np.ndarray))]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {bad[:10]}.")
    return {str(k): _to_numpy(v) for k, v in obj.items()}


def read_hf_weights(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face folder: safetensors first, then pytorch_model.bin."""
    single = [("model.safetensors", _load_safetensors),
              ("pytorch_model.bin", lambda p: flatten_torch_state(torch_load(p), p))]
    for name, reader in single:
        if (folder / name).is_file():
            return reader(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded: the index maps every key to its shard
            weight_map = read_json(index)
            weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{index} has no \"weight_map\" object (key -> shard file); "
                                      "re-download it.")
            out: dict[str, np.ndarray] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                if not (folder / shard).is_file():
                    raise MissingFileError(f"{index} lists the shard {shard}, which is not in {folder}.")
                out.update(reader(folder / shard))
            return out
    raise MissingFileError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json, "
        f"pytorch_model.bin or pytorch_model.bin.index.json (found {sorted(os.listdir(folder))}).")


# ============================================================================ key bookkeeping

class StateDict:
    """Checkpoint tensors by name; records what was consumed so leftovers can be reported."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str):
        self.tensors, self.source = dict(tensors), source
        self.used: set[str] = set()
        self.missing: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str, optional: bool = False) -> np.ndarray | None:
        if key not in self.tensors:
            if not optional:
                self.missing.append(key)
            return None
        self.used.add(key)
        return self.tensors[key]

    def drop(self, pattern: str) -> None:
        """Mark keys matching a regex as consumed on purpose (e.g. HF's unused pooler)."""
        self.used.update(k for k in self.tensors if re.fullmatch(pattern, k))

    def count(self, pattern: str) -> int:
        """1 + the largest integer captured by `pattern` over all keys (e.g. number of blocks)."""
        idx = [int(m.group(1)) for k in self.tensors if (m := re.match(pattern, k))]
        return max(idx) + 1 if idx else 0

    def finish(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if self.missing or unused:
            parts = []
            if self.missing:
                parts.append(f"{len(self.missing)} missing key(s): {self.missing}")
            if unused:
                parts.append(f"{len(unused)} unused key(s): {unused}")
            raise ConversionError(f"{self.source}: " + "; ".join(parts) + ".")


class Params:
    """Builds a flax params tree from torch tensors, remembering each leaf's source key (for
    the shape check's messages).  What goes where: the key tables of vit_jax.convert.tables."""

    def __init__(self, sd: StateDict):
        self.sd = sd
        self.flat: dict[str, np.ndarray] = {}
        self.src: dict[str, tuple[str, tuple[int, ...]]] = {}

    def put(self, dst: str, value: np.ndarray | None, src: str,
            fn: Callable[[np.ndarray], np.ndarray] | None = None, ndim: int | None = None) -> None:
        if value is None:
            return
        self.src[dst] = (src, tuple(value.shape))
        # A tensor of the wrong rank is kept as is: the shape check then names it.
        self.flat[dst] = fn(value) if fn is not None and (ndim is None or value.ndim == ndim) \
            else value

    def tree(self) -> dict:
        out: dict = {}
        for path, value in self.flat.items():
            node = out
            *parents, leaf = path.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def _check_against(params: Params, expected: Mapping, what: str) -> None:
    """Compare the built tree with the module's own (eval_shape) tree: names and shapes."""
    want = {k: tuple(v.shape) for k, v in flatten(expected).items()}
    got = params.flat
    problems = []
    for k in sorted(set(want) - set(got)):
        problems.append(f"{what} expects parameter {k} {want[k]} but the checkpoint has no "
                        "tensor for it")
    for k in sorted(set(got) - set(want)):
        src, shape = params.src[k]
        problems.append(f"checkpoint key {src!r} {shape} has no place in {what} (would be {k}); "
                        "does config.json match the weights (e.g. qkv_bias)?")
    for k in sorted(set(want) & set(got)):
        if tuple(got[k].shape) != want[k]:
            src, shape = params.src[k]
            problems.append(f"shape mismatch for checkpoint key {src!r}: checkpoint {shape} "
                            f"(as flax {tuple(got[k].shape)}) but {what} parameter {k} is {want[k]}")
    if problems:
        raise ConversionError("; ".join(problems) + ".")


def _fields(module: nn.Module) -> list[str]:
    return [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]


def _apply_overrides(module: nn.Module, overrides: Mapping[str, Any]) -> nn.Module:
    """module.clone(**overrides); for MAE, ViT fields it lacks go to its encoder."""
    if not overrides:
        return module
    own = {k: v for k, v in overrides.items() if k in _fields(module)}
    rest = {k: v for k, v in overrides.items() if k not in own}
    encoder = getattr(module, "encoder", None)
    if rest and isinstance(encoder, ViT):
        unknown = sorted(set(rest) - set(_fields(encoder)))
        if not unknown:
            own["encoder"] = encoder.clone(**rest)
            rest = {}
    if rest:
        valid = _fields(module) + (_fields(encoder) if isinstance(encoder, ViT) else [])
        raise ConversionError(f"unknown override(s) {sorted(rest)} for {type(module).__name__}; "
                              f"valid fields: {valid}.")
    return module.clone(**own)


def finish(module: nn.Module, params: Params, init_args: tuple, init_kwargs: dict,
            what: str, overrides: Mapping[str, Any]) -> tuple[nn.Module, Variables]:
    """Report unused / missing keys, apply the overrides, check names and shapes against
    the resulting module, and return (module, {"params": jax arrays})."""
    params.sd.finish()
    module = _apply_overrides(module, overrides)
    # Check against the final module (an override that changes shapes must fail), in the
    # unscanned layout the tree is built in.
    flat_module = module
    if isinstance(module, ViT) and module.scan:
        flat_module = module.clone(scan=False)
    encoder = getattr(module, "encoder", None)
    if isinstance(encoder, ViT) and encoder.scan:
        flat_module = module.clone(encoder=encoder.clone(scan=False))
    # eval_shape: the shapes of a fresh init without computing (or allocating) anything.
    expected = jax.eval_shape(lambda a, kw: flat_module.init(jax.random.key(0), *a, **kw),
                              init_args, init_kwargs)["params"]
    _check_against(params, expected, what)
    tree = jax.tree.map(jnp.asarray, params.tree())
    if isinstance(module, ViT) and module.scan:
        tree = scan_params(tree, module.depth)
    if isinstance(encoder, ViT) and encoder.scan:
        tree["encoder"] = scan_params(tree["encoder"], encoder.depth)
    return module, {"params": tree}


# ============================================================================ shared mappings

def pair(x: Any) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


def dummy_images(module: ViT) -> jax.ShapeDtypeStruct:
    h, w = pair(module.image_size)
    return jax.ShapeDtypeStruct((1, h, w, module.in_channels), jnp.float32)


def check_fixed_posemb(value: np.ndarray | None, key: str, grid: tuple[int, int], dim: int) -> None:
    """A stored fixed pos-emb must be the sin-cos table vit_jax recomputes (MAE layout)."""
    if value is None:
        return
    want = sincos_2d(grid[0], grid[1], dim, cls_token=True)
    if tuple(value.shape) != want.shape:
        raise ConversionError(f"shape mismatch for checkpoint key {key!r}: checkpoint "
                              f"{tuple(value.shape)} but the fixed sin-cos table is {want.shape}.")
    diff = float(np.abs(value - want).max())
    if diff > _POSEMB_ATOL:
        raise ConversionError(
            f"{key!r} is not the fixed 2-D sin-cos position embedding that vit_jax computes "
            f"(max |diff| {diff:.3g}); vit_jax has no parameter for it, so the converted model "
            "would differ. Pass check_posemb=False to load anyway (e.g. a randomly initialised "
            "Hugging Face ViTMAE, whose table may be all zeros).")


# ============================================================================ MAE targets

def make_mae(encoder: ViT, decoder_width: int, decoder_depth: int, decoder_heads: int,
             decoder_mlp_dim: int, mask_ratio: float, norm_pix_loss: bool) -> nn.Module:
    """The MAE module of vit_jax.models.mae for an encoder ViT and decoder sizes."""
    # The decoder's eps / act / qkv_bias default to the encoder's, as in HF's single config.
    return MAE(encoder=encoder, decoder_width=decoder_width, decoder_depth=decoder_depth,
                   decoder_heads=decoder_heads, decoder_mlp_dim=decoder_mlp_dim,
                   mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)


def mae_init_args(module: nn.Module) -> tuple[tuple, dict]:
    enc = module.encoder
    images = dummy_images(enc)
    gh, gw = enc.base_grid
    return (images,), {"noise": jax.ShapeDtypeStruct((1, gh * gw), jnp.float32)}


# ============================================================================ HF folders

def canonical_keys(tensors: Mapping[str, np.ndarray], folder: Path | str, prefix: str,
                   renames: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
    """Strips `prefix` and maps newer Hugging Face module names onto the hub layout (`renames`:
    (regex, replacement) pairs). Raises ConversionError when two keys name the same tensor."""
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        k = key[len(prefix):] if key.startswith(prefix) else key
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        if k in out:
            raise ConversionError(f"{folder}: keys {origin[k]!r} and {key!r} are the same tensor "
                                  f"({k!r}) under two names.")
        out[k], origin[k] = value, key
    return out


def write_hf_folder(folder: PathLike, cfg: dict, tensors: Mapping[str, np.ndarray],
                    num_classes: int | None, id2label: Mapping[int, str] | None = None) -> Path:
    """Writes config.json (with id2label/label2id for a *ForImageClassification folder, i.e.
    num_classes is not None) and model.safetensors.

    Shared by every exporter. Arrays are made C-contiguous first: safetensors writes the raw
    buffer, so a transposed view would be scrambled.
    """
    cfg = dict(cfg)
    if num_classes is not None:
        labels = {int(k): str(v) for k, v in (id2label or {}).items()} or \
            {i: f"LABEL_{i}" for i in range(num_classes)}
        if sorted(labels) != list(range(num_classes)):
            raise ConversionError(f"id2label must name classes 0..{num_classes - 1}; "
                                  f"got keys {sorted(labels)}.")
        cfg["id2label"] = {str(i): labels[i] for i in range(num_classes)}
        cfg["label2id"] = {labels[i]: i for i in range(num_classes)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # np.array, not ascontiguousarray, which turns 0-d arrays (num_batches_tracked) into 1-d
    save_file({k: np.array(v, order="C") for k, v in tensors.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder
