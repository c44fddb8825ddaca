"""Import / export of weights: Hugging Face folders and the official MAE checkpoints.

Public API:
    load_hf(folder, **overrides) -> (module, variables)
        A Hugging Face folder (config.json + model.safetensors [sharded or not], or
        pytorch_model.bin read with torch.load(weights_only=True)).  Architectures:
        SUPPORTED_HF_ARCHITECTURES.  Every hyper-parameter comes from config.json
        (a key missing there takes the Hugging Face default).
    save_hf(module, variables, folder, id2label=None) -> folder
        A vit_jax ViT -> config.json + model.safetensors that transformers' ViTModel
        (num_classes == 0) or ViTForImageClassification (num_classes > 0) loads.
    load_mae_checkpoint(path, model_name=None, **overrides) -> (module, variables)
        facebookresearch/mae files: with the decoder (`mae_pretrain_vit_*_full.pth`,
        `mae_visualize_vit_*.pth`) -> vit_jax.objectives.mae.MAE; encoder only (the
        released `mae_pretrain_vit_*.pth`) -> ViT backbone; `mae_finetuned_vit_*.pth` ->
        ViT with global pool + fc_norm + head.

What each Hugging Face architecture becomes (outputs agree in float32 eval mode):
    ViTModel                   ViT(num_classes=0, pool="token"); aux["encoded"] ==
                               last_hidden_state.  HF's pooler (dense + tanh on the cls
                               token, `pooler.*` keys) has no vit_jax counterpart and is
                               ignored; `out` is the cls token after the final norm.
    ViTForImageClassification  ViT(num_classes=num_labels, pool="token"); out == logits.
    ViTMAEModel                ViT(num_classes=0, posemb="sincos2d", pool="token"): the
                               pre-trained encoder as a backbone (fine-tuning, features).
                               HF's ViTMAEModel always masks (it shuffles even at
                               mask_ratio 0); ours sees every patch, so aux["encoded"] ==
                               last_hidden_state for mask_ratio=0 after unshuffling HF's
                               tokens with ids_restore (identical for sorted noise).
    ViTMAEForPreTraining       vit_jax.objectives.mae.MAE; apply(v, images, noise=noise)
                               gives loss / pred / mask equal to HF's loss / logits / mask.
The fixed sin-cos position embeddings of ViTMAE are not parameters here: they are checked
against vit_jax's `sincos_2d` (1e-4) and dropped (check_posemb=False skips the check).

Layouts: torch Linear weight (out, in) -> flax Dense kernel (in, out); Conv2d weight
(out, in, kh, kw) -> flax Conv kernel (kh, kw, in, out); images are NCHW in torch and
NHWC here.  All parameters are loaded as float32.

Errors: a missing folder / config / weights file raises FileNotFoundError; everything
else (unknown architecture, missing or unused checkpoint keys, shape mismatches,
settings the other side cannot express) raises ConversionError (a ValueError) naming
the keys and shapes involved.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.layers import sincos_2d
from vit_jax.models.vit import ViT, scan_params, unscan_params

Variables = dict[str, Any]
PathLike = str | os.PathLike

SUPPORTED_HF_ARCHITECTURES = ("ViTModel", "ViTForImageClassification", "ViTMAEModel",
                              "ViTMAEForPreTraining")

# Fixed sin-cos embeddings are recomputed here; a stored copy must agree to this tolerance.
_POSEMB_ATOL = 1e-4


class ConversionError(ValueError):
    """A checkpoint cannot be converted (bad keys, shapes or unsupported settings)."""


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


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
        return {k: _to_numpy(v) for k, v in load_file(str(path)).items()}
    except TypeError:
        # numpy has no bfloat16: read through torch instead.
        from safetensors.torch import load_file as load_torch
        return {k: _to_numpy(v) for k, v in load_torch(str(path)).items()}


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True): tensors and plain containers only, never arbitrary objects."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is optional for safetensors folders
        raise ConversionError(f"reading {path} needs PyTorch (pip install torch); "
                              "safetensors files do not.") from e
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path} holds Python objects besides tensors (e.g. the argparse Namespace or "
            "optimizer state of a training checkpoint), which weights_only=True refuses to "
            "unpickle. If you trust the file, extract the weights once with "
            "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth').") from e


def _flatten_torch_state(obj: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} does not hold a state dict (got {type(obj).__name__}).")
    bad = [k for k, v in obj.items() if not (hasattr(v, "detach") or isinstance(v, np.ndarray))]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {bad[:10]}.")
    return {str(k): _to_numpy(v) for k, v in obj.items()}


def _read_hf_weights(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face folder: safetensors first, then pytorch_model.bin."""
    single = [("model.safetensors", _load_safetensors),
              ("pytorch_model.bin", lambda p: _flatten_torch_state(_torch_load(p), p))]
    for name, reader in single:
        if (folder / name).is_file():
            return reader(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded: the index maps every key to its shard
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out: dict[str, np.ndarray] = {}
            for shard in shards:
                out.update(reader(folder / shard))
            return out
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json, "
        f"pytorch_model.bin or pytorch_model.bin.index.json (found {sorted(os.listdir(folder))}).")


# ============================================================================ key bookkeeping

class _StateDict:
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


class _Params:
    """Builds a flax params tree from torch tensors, remembering each leaf's source key."""

    def __init__(self, sd: _StateDict):
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

    def array(self, dst: str, src: str) -> None:
        self.put(dst, self.sd.take(src), src)

    def dense(self, dst: str, src: str) -> None:
        """torch Linear `src`.{weight,bias} -> flax Dense `dst`/{kernel,bias} (bias optional)."""
        self.put(f"{dst}/kernel", self.sd.take(f"{src}.weight"), f"{src}.weight", np.transpose, 2)
        self.put(f"{dst}/bias", self.sd.take(f"{src}.bias", optional=True), f"{src}.bias")

    def conv(self, dst: str, src: str) -> None:
        """torch Conv2d (out, in, kh, kw) -> flax Conv (kh, kw, in, out)."""
        self.put(f"{dst}/kernel", self.sd.take(f"{src}.weight"), f"{src}.weight",
                 lambda w: w.transpose(2, 3, 1, 0), 4)
        self.put(f"{dst}/bias", self.sd.take(f"{src}.bias", optional=True), f"{src}.bias")

    def norm(self, dst: str, src: str) -> None:
        self.put(f"{dst}/scale", self.sd.take(f"{src}.weight"), f"{src}.weight")
        self.put(f"{dst}/bias", self.sd.take(f"{src}.bias"), f"{src}.bias")

    def fused_qkv(self, dst: str, src: str) -> None:
        """timm's fused qkv Linear (3D, D): rows are [q | k | v] -> separate query/key/value."""
        w, b = self.sd.take(f"{src}.weight"), self.sd.take(f"{src}.bias", optional=True)
        for i, name in enumerate(("query", "key", "value")):
            if w is not None:
                d = w.shape[0] // 3
                self.put(f"{dst}/{name}/kernel", w[i * d:(i + 1) * d], f"{src}.weight", np.transpose, 2)
            if b is not None:
                d = b.shape[0] // 3
                self.put(f"{dst}/{name}/bias", b[i * d:(i + 1) * d], f"{src}.bias")

    def tree(self) -> dict:
        out: dict = {}
        for path, value in self.flat.items():
            node = out
            *parents, leaf = path.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, path))
        else:
            out[path] = v
    return out


def _check_against(params: _Params, expected: Mapping, what: str) -> None:
    """Compare the built tree with the module's own (eval_shape) tree: names and shapes."""
    want = {k: tuple(v.shape) for k, v in _flatten(expected).items()}
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


def _finish(module: nn.Module, params: _Params, init_args: tuple, init_kwargs: dict,
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

def _pair(x: Any) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


def _dummy_images(module: ViT) -> jax.ShapeDtypeStruct:
    h, w = _pair(module.image_size)
    return jax.ShapeDtypeStruct((1, h, w, module.in_channels), jnp.float32)


def _check_posemb(value: np.ndarray | None, key: str, grid: tuple[int, int], dim: int) -> None:
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


# ============================================================================ Hugging Face

# HF defaults (configuration_vit.py / configuration_vit_mae.py) for keys absent from config.json.
_HF_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3, qkv_bias=True,
    decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
    decoder_intermediate_size=2048, mask_ratio=0.75, norm_pix_loss=False)

# HF activation name -> vit_jax (layers.get_activation) name.
_HF_ACTS = {"gelu": "gelu", "gelu_python": "gelu",
            "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
            "gelu_accurate": "gelu_tanh", "quick_gelu": "quick_gelu",
            "relu": "relu", "silu": "silu", "swish": "silu"}
# vit_jax activation name -> HF name (for save_hf).
_TO_HF_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "gelu_new": "gelu_new",
               "gelu_pytorch_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu",
               "relu": "relu", "silu": "silu", "swish": "swish"}

# (vit_jax block sub-path, HF layer sub-key, kind): one table for reading and writing.
_HF_BLOCK = (("norm1", "layernorm_before", "norm"),
             ("attn/query", "attention.attention.query", "dense"),
             ("attn/key", "attention.attention.key", "dense"),
             ("attn/value", "attention.attention.value", "dense"),
             ("attn/out", "attention.output.dense", "dense"),
             ("norm2", "layernorm_after", "norm"),
             ("mlp/fc1", "intermediate.dense", "dense"),
             ("mlp/fc2", "output.dense", "dense"))

# transformers >= 5 module names (and its saving quirk for the MAE decoder) -> the file layout.
_HF_RENAMES = ((r"^layers\.(\d+)\.", r"encoder.layer.\1."),
               (r"decoder_encoder\.layer\.(\d+)\.", r"decoder_layers.\1."),
               (r"\.attention\.q_proj\.", ".attention.attention.query."),
               (r"\.attention\.k_proj\.", ".attention.attention.key."),
               (r"\.attention\.v_proj\.", ".attention.attention.value."),
               (r"\.attention\.o_proj\.", ".attention.output.dense."),
               (r"\.mlp\.fc1\.", ".intermediate.dense."),
               (r"\.mlp\.fc2\.", ".output.dense."))


def _hf_canonical(tensors: Mapping[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    """Strip the `vit.` prefix and map newer HF module names onto the checkpoint layout."""
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        k = key[len("vit."):] if key.startswith("vit.") else key
        for pattern, repl in _HF_RENAMES:
            k = re.sub(pattern, repl, k)
        if k in out:
            raise ConversionError(f"{folder}: keys {origin[k]!r} and {key!r} are the same tensor "
                                  f"({k!r}) under two names.")
        out[k], origin[k] = value, key
    return out


def _hf_act(cfg: Mapping[str, Any]) -> str:
    act = cfg["hidden_act"]
    if act not in _HF_ACTS:
        raise ConversionError(f"hidden_act {act!r} is not supported; vit_jax maps "
                              f"{sorted(_HF_ACTS)}.")
    return _HF_ACTS[act]


def _vit_fields_from_hf(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """ViT fields shared by the HF ViT and ViTMAE encoders."""
    image, patch = _pair(cfg["image_size"]), _pair(cfg["patch_size"])
    return dict(width=int(cfg["hidden_size"]), depth=int(cfg["num_hidden_layers"]),
                num_heads=int(cfg["num_attention_heads"]), mlp_dim=int(cfg["intermediate_size"]),
                image_size=image[0] if image[0] == image[1] else image,
                patch_size=patch[0] if patch[0] == patch[1] else patch,
                in_channels=int(cfg["num_channels"]), layer_norm_eps=float(cfg["layer_norm_eps"]),
                act=_hf_act(cfg), qkv_bias=bool(cfg["qkv_bias"]),
                dropout=float(cfg["hidden_dropout_prob"]),
                attn_dropout=float(cfg["attention_probs_dropout_prob"]),
                class_token=True, pool="token", fc_norm=False, pre_norm=False,
                norm_layer="layernorm", init_values=None, fused_qkv=False, patch_bias=True)


def _hf_blocks(p: _Params, dst_prefix: str, src_prefix: str, depth: int) -> None:
    for i in range(depth):
        for dst, src, kind in _HF_BLOCK:
            getattr(p, kind)(f"{dst_prefix}{i}/{dst}", f"{src_prefix}{i}.{src}")


def _hf_encoder(p: _Params, module: ViT, learned_posemb: bool, check_posemb: bool,
                dst: str = "") -> None:
    """HF ViT / ViTMAE encoder keys (without the `vit.` prefix) -> ViT params under `dst`."""
    p.conv(f"{dst}embedding", "embeddings.patch_embeddings.projection")
    p.array(f"{dst}cls_token", "embeddings.cls_token")
    if learned_posemb:
        p.array(f"{dst}pos_embed", "embeddings.position_embeddings")
    else:
        key = "embeddings.position_embeddings"
        value = p.sd.take(key, optional=True)
        if check_posemb:
            _check_posemb(value, key, module.base_grid, module.width)
    _hf_blocks(p, f"{dst}blocks_", "encoder.layer.", module.depth)
    p.norm(f"{dst}norm", "layernorm")


def _num_labels(cfg: Mapping[str, Any]) -> int:
    if "id2label" in cfg:
        return len(cfg["id2label"])
    return int(cfg.get("num_labels", 2))  # HF's PretrainedConfig default


def _load_hf_vit(cfg: dict, sd: _StateDict, arch: str, overrides: dict,
                 check_posemb: bool) -> tuple[nn.Module, Variables]:
    classify = arch == "ViTForImageClassification"
    mae = arch == "ViTMAEModel"
    module = ViT(num_classes=_num_labels(cfg) if classify else 0,
                 posemb="sincos2d" if mae else "learn", **_vit_fields_from_hf(cfg))
    p = _Params(sd)
    _hf_encoder(p, module, learned_posemb=not mae, check_posemb=check_posemb)
    if classify:
        p.dense("head", "classifier")
    else:
        sd.drop(r"pooler\.dense\.(weight|bias)")   # HF's dense+tanh pooler: no counterpart
    sd.drop(r"embeddings\.mask_token")              # only used by masked-image-modeling heads
    return _finish(module, p, (_dummy_images(module),), {}, arch, overrides)


def _mae_class() -> type:
    try:
        from vit_jax.objectives.mae import MAE
    except ImportError as e:
        raise ConversionError("converting MAE pre-training weights needs "
                              "vit_jax.objectives.mae.MAE, which could not be imported.") from e
    return MAE


def _build_mae(encoder: ViT, decoder_width: int, decoder_depth: int, decoder_heads: int,
               decoder_mlp_dim: int, mask_ratio: float, norm_pix_loss: bool) -> nn.Module:
    """The MAE module of vit_jax.objectives.mae for an encoder ViT and decoder sizes."""
    mae_cls = _mae_class()
    # The decoder's eps / act / qkv_bias default to the encoder's, as in HF's single config.
    return mae_cls(encoder=encoder, decoder_width=decoder_width, decoder_depth=decoder_depth,
                   decoder_heads=decoder_heads, decoder_mlp_dim=decoder_mlp_dim,
                   mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)


def _mae_init_args(module: nn.Module) -> tuple[tuple, dict]:
    enc = module.encoder
    images = _dummy_images(enc)
    gh, gw = enc.base_grid
    return (images,), {"noise": jax.ShapeDtypeStruct((1, gh * gw), jnp.float32)}


def _load_hf_mae_pretraining(cfg: dict, sd: _StateDict, arch: str, overrides: dict,
                             check_posemb: bool) -> tuple[nn.Module, Variables]:
    encoder = ViT(num_classes=0, posemb="sincos2d", **_vit_fields_from_hf(cfg))
    module = _build_mae(encoder, decoder_width=int(cfg["decoder_hidden_size"]),
                        decoder_depth=int(cfg["decoder_num_hidden_layers"]),
                        decoder_heads=int(cfg["decoder_num_attention_heads"]),
                        decoder_mlp_dim=int(cfg["decoder_intermediate_size"]),
                        mask_ratio=float(cfg["mask_ratio"]),
                        norm_pix_loss=bool(cfg["norm_pix_loss"]))
    p = _Params(sd)
    _hf_encoder(p, encoder, learned_posemb=False, check_posemb=check_posemb, dst="encoder/")
    p.dense("decoder_embed", "decoder.decoder_embed")
    p.array("mask_token", "decoder.mask_token")
    key = "decoder.decoder_pos_embed"
    value = sd.take(key, optional=True)
    if check_posemb:
        _check_posemb(value, key, encoder.base_grid, int(cfg["decoder_hidden_size"]))
    _hf_blocks(p, "decoder_blocks_", "decoder.decoder_layers.", int(cfg["decoder_num_hidden_layers"]))
    p.norm("decoder_norm", "decoder.decoder_norm")
    p.dense("decoder_pred", "decoder.decoder_pred")
    args, kwargs = _mae_init_args(module)
    return _finish(module, p, args, kwargs, arch, overrides)


_HF_LOADERS: dict[str, Callable[..., tuple[nn.Module, Variables]]] = {
    "ViTModel": _load_hf_vit,
    "ViTForImageClassification": _load_hf_vit,
    "ViTMAEModel": _load_hf_vit,
    "ViTMAEForPreTraining": _load_hf_mae_pretraining,
}


def _hf_architecture(cfg: Mapping[str, Any], folder: Path) -> str:
    archs = list(cfg.get("architectures") or [])
    for arch in archs:
        if arch in _HF_LOADERS:
            return arch
    raise ConversionError(
        f"{folder / 'config.json'}: architecture(s) {archs or '(none listed)'} (model_type "
        f"{cfg.get('model_type')!r}) not supported; supported: {list(_HF_LOADERS)}.")


def load_hf(folder: PathLike, *, check_posemb: bool = True,
            **overrides: Any) -> tuple[nn.Module, Variables]:
    """Load a Hugging Face model folder into a vit_jax module and its variables.

    Args:
        folder: directory with config.json and model.safetensors (or its sharded index),
            or pytorch_model.bin (read with torch.load(weights_only=True)).
        check_posemb: for ViTMAE, verify that the stored fixed position embeddings are the
            sin-cos table vit_jax recomputes (they are not parameters here).
        **overrides: fields of the returned module that do not change the parameters,
            e.g. drop_path_rate=0.1, dtype=jnp.bfloat16, scan=True (ViT).

    Returns:
        (module, {"params": ...}); see the module docstring for what each architecture
        becomes and which output matches which Hugging Face output.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Hugging Face model folder {folder} does not exist.")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (found {sorted(os.listdir(folder))}); "
                                "a Hugging Face model folder needs one (save_pretrained writes it).")
    cfg = {**_HF_DEFAULTS, **json.loads(cfg_path.read_text())}
    arch = _hf_architecture(cfg, folder)
    sd = _StateDict(_hf_canonical(_read_hf_weights(folder), folder), str(folder))
    return _HF_LOADERS[arch](cfg, sd, arch, overrides, check_posemb)


# ============================================================================ save_hf

def _hf_unsupported(module: ViT) -> list[str]:
    """Settings of a vit_jax ViT that transformers' ViT cannot express."""
    bad = []
    if module.pool != "token":
        bad.append(f"pool={module.pool!r} (HF ViT classifies from the class token)")
    if not module.class_token:
        bad.append("class_token=False (HF ViT always has a class token)")
    if module.posemb != "learn":
        bad.append(f"posemb={module.posemb!r} (HF ViT has a learned position embedding)")
    if module._use_fc_norm:
        bad.append("fc_norm=True (HF ViT has no norm on the pooled features)")
    if module.pre_norm:
        bad.append("pre_norm=True (HF ViT has no norm before the blocks)")
    if module.norm_layer != "layernorm":
        bad.append(f"norm_layer={module.norm_layer!r} (HF ViT uses LayerNorm)")
    if module.init_values is not None:
        bad.append(f"init_values={module.init_values} (HF ViT has no layer scale)")
    if module.act not in _TO_HF_ACTS:
        bad.append(f"act={module.act!r} (no Hugging Face activation of that name)")
    return bad


def _to_torch_dense(flat: Mapping[str, np.ndarray], src: str, dst: str,
                    out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = np.ascontiguousarray(flat[f"{src}/kernel"].T)
    if f"{src}/bias" in flat:
        out[f"{dst}.bias"] = flat[f"{src}/bias"]


def _vit_to_hf_state(module: ViT, params: Mapping) -> dict[str, np.ndarray]:
    """vit_jax ViT params -> HF ViT(Model|ForImageClassification) checkpoint tensors."""
    if "blocks" in params:  # scan layout
        params = unscan_params(dict(params))
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    pre = "vit." if module.num_classes > 0 else ""
    out: dict[str, np.ndarray] = {}
    kernel = flat["embedding/kernel"]
    out[f"{pre}embeddings.patch_embeddings.projection.weight"] = np.ascontiguousarray(
        kernel.transpose(3, 2, 0, 1))
    # HF's patch conv always has a bias: a zero one reproduces patch_bias=False exactly.
    out[f"{pre}embeddings.patch_embeddings.projection.bias"] = flat.get(
        "embedding/bias", np.zeros(kernel.shape[-1], np.float32))
    out[f"{pre}embeddings.cls_token"] = flat["cls_token"]
    out[f"{pre}embeddings.position_embeddings"] = flat["pos_embed"]
    for i in range(module.depth):
        blk = f"blocks_{i}"
        hf = f"{pre}encoder.layer.{i}"
        if module.fused_qkv:  # qkv kernel (D, 3D) columns are [q | k | v]
            qkv = flat[f"{blk}/attn/qkv/kernel"]
            d = qkv.shape[1] // 3
            for j, name in enumerate(("query", "key", "value")):
                flat[f"{blk}/attn/{name}/kernel"] = qkv[:, j * d:(j + 1) * d]
                if f"{blk}/attn/qkv/bias" in flat:
                    flat[f"{blk}/attn/{name}/bias"] = flat[f"{blk}/attn/qkv/bias"][j * d:(j + 1) * d]
        for dst, src, kind in _HF_BLOCK:
            if kind == "norm":
                out[f"{hf}.{src}.weight"] = flat[f"{blk}/{dst}/scale"]
                out[f"{hf}.{src}.bias"] = flat[f"{blk}/{dst}/bias"]
            else:
                _to_torch_dense(flat, f"{blk}/{dst}", f"{hf}.{src}", out)
    out[f"{pre}layernorm.weight"] = flat["norm/scale"]
    out[f"{pre}layernorm.bias"] = flat["norm/bias"]
    if module.num_classes > 0:
        _to_torch_dense(flat, "head", "classifier", out)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def save_hf(module: nn.Module, variables: Mapping[str, Any], folder: PathLike,
            id2label: Mapping[int, str] | None = None) -> Path:
    """Write a vit_jax ViT as a Hugging Face folder (config.json + model.safetensors).

    num_classes == 0 gives a ViTModel folder (no pooler weights: transformers initialises
    its pooler randomly and warns; last_hidden_state is exact), num_classes > 0 a
    ViTForImageClassification folder whose logits equal ours.  Weights are written as
    float32.  Raises ConversionError for settings HF's ViT cannot express (gap pooling,
    sin-cos or no pos-emb, no class token, fc_norm, norm_pre, RMSNorm, layer scale, ...).
    """
    if not isinstance(module, ViT):
        raise ConversionError(f"save_hf writes vit_jax ViT models; got {type(module).__name__}.")
    bad = _hf_unsupported(module)
    if bad:
        raise ConversionError("Hugging Face's ViT cannot express: " + "; ".join(bad) + ".")
    params = variables["params"] if "params" in variables else variables
    tensors = _vit_to_hf_state(module, params)
    image, patch = _pair(module.image_size), _pair(module.patch_size)
    classify = module.num_classes > 0
    cfg: dict[str, Any] = {
        "architectures": ["ViTForImageClassification" if classify else "ViTModel"],
        "model_type": "vit",
        "hidden_size": module.width, "num_hidden_layers": module.depth,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.mlp_dim or int(module.width * module.mlp_ratio),
        "hidden_act": _TO_HF_ACTS[module.act],
        "hidden_dropout_prob": module.dropout,
        "attention_probs_dropout_prob": module.attn_dropout,
        "initializer_range": 0.02, "layer_norm_eps": module.layer_norm_eps,
        "image_size": image[0] if image[0] == image[1] else list(image),
        "patch_size": patch[0] if patch[0] == patch[1] else list(patch),
        "num_channels": module.in_channels, "qkv_bias": module.qkv_bias,
        "encoder_stride": patch[0], "pooler_output_size": module.width, "pooler_act": "tanh",
        "dtype": "float32",
    }
    if classify:
        labels = {int(k): str(v) for k, v in (id2label or {}).items()} or \
            {i: f"LABEL_{i}" for i in range(module.num_classes)}
        if sorted(labels) != list(range(module.num_classes)):
            raise ConversionError(f"id2label must name classes 0..{module.num_classes - 1}; "
                                  f"got keys {sorted(labels)}.")
        cfg["id2label"] = {str(i): labels[i] for i in range(module.num_classes)}
        cfg["label2id"] = {labels[i]: i for i in range(module.num_classes)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder


# ============================================================================ official MAE

# width -> num_heads of the official MAE encoders (ViT-B/L/H) and decoder (512-d, 16 heads).
_MAE_ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
_MAE_DECODER_HEADS = {512: 16}
_OFFICIAL_NAME = re.compile(r"(?:mae_)?(?:vit|deit)_(tiny|small|base|large|huge|giant)_patch(\d+)")


def _default_heads(width: int, table: Mapping[int, int], field: str) -> int:
    if width in table:
        return table[width]
    if width % 64 == 0:
        return width // 64
    raise ConversionError(f"cannot infer the number of heads for width {width} from the "
                          f"checkpoint; pass {field}=N.")


def _read_mae_file(path: Path) -> dict[str, np.ndarray]:
    obj = _torch_load(path)
    for wrapper in ("model", "state_dict"):  # official files: {"model": state_dict}
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    tensors = _flatten_torch_state(obj, path)
    if tensors and all(k.startswith("module.") for k in tensors):  # DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _named_vit(model_name: str, image_size: int) -> ViT:
    from vit_jax import models
    m = _OFFICIAL_NAME.match(model_name)
    if m:
        return models.vit(m.group(1), int(m.group(2)), image_size)
    module = models.create(model_name)
    if not isinstance(module, ViT):
        raise ConversionError(f"model_name {model_name!r} is not a ViT.")
    return module


def _mae_blocks(p: _Params, dst_prefix: str, src_prefix: str, depth: int) -> None:
    for i in range(depth):
        s, d = f"{src_prefix}{i}", f"{dst_prefix}{i}"
        p.norm(f"{d}/norm1", f"{s}.norm1")
        p.fused_qkv(f"{d}/attn", f"{s}.attn.qkv")
        p.dense(f"{d}/attn/out", f"{s}.attn.proj")
        p.norm(f"{d}/norm2", f"{s}.norm2")
        p.dense(f"{d}/mlp/fc1", f"{s}.mlp.fc1")
        p.dense(f"{d}/mlp/fc2", f"{s}.mlp.fc2")


def _need(sd: _StateDict, key: str, path: Path) -> np.ndarray:
    if key not in sd:
        raise ConversionError(f"{path}: key {key!r} is missing, so the model size cannot be "
                              f"inferred; is this an official MAE checkpoint? Keys: "
                              f"{sorted(sd.tensors)[:20]}...")
    return sd.tensors[key]


def load_mae_checkpoint(path: PathLike, model_name: str | None = None, *,
                        check_posemb: bool = True, **overrides: Any) -> tuple[nn.Module, Variables]:
    """Load an official facebookresearch/mae checkpoint (read with torch.load(weights_only=True)).

    * Encoder + decoder keys (`mae_pretrain_vit_*_full.pth`, `mae_visualize_vit_*.pth`)
      -> vit_jax.objectives.mae.MAE whose encoder is a ViT(num_classes=0,
      posemb="sincos2d", pool="token").  The fixed pos_embed / decoder_pos_embed tables
      are checked and dropped.  The files do not say how they were trained: norm_pix_loss
      defaults to True (the `_full` models reconstruct normalised pixels; pass
      norm_pix_loss=False for `mae_visualize_*`) and mask_ratio to 0.75.
    * `mae_finetuned_vit_*.pth` (encoder keys + fc_norm + head, no final norm) -> ViT with
      pool="gap", fc_norm, a learned pos-emb (MAE fine-tuning trains it) and the head; a
      checkpoint with `norm` and no `fc_norm` gives pool="token" instead.
    * An encoder-only file (patch_embed, cls_token, pos_embed, blocks, norm; no decoder, no
      head: the released `mae_pretrain_vit_{base,large,huge}.pth`)
      -> ViT(num_classes=0, pool="token") with a learned pos-emb
      holding the stored table: the starting point of MAE fine-tuning.  For MAE's global-pool
      recipe, build ViT(pool="gap", num_classes=K) and copy every parameter but `norm`.

    Sizes (width, depth, MLP, patch, channels, image size, qkv bias, classes, decoder) are
    inferred from the tensor shapes; the heads cannot be, so they come from `model_name`
    (e.g. "vit_base_patch16", "mae_vit_large_patch16" or a vit_jax model name), else from
    the official sizes by width (768 -> 12, 1024/1280 -> 16, decoder 512 -> 16), else
    width // 64; `num_heads=` / `decoder_heads=` override.  Other keyword overrides set
    module fields that keep the parameter shapes (drop_path_rate, mask_ratio, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MAE checkpoint {path} does not exist.")
    sd = _StateDict(_read_mae_file(path), str(path))
    overrides = dict(overrides)

    w = _need(sd, "patch_embed.proj.weight", path)
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ConversionError(f"{path}: 'patch_embed.proj.weight' has shape {w.shape}; "
                              "expected (width, channels, p, p).")
    width, channels, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    pos = _need(sd, "pos_embed", path)
    n = int(pos.shape[1]) - 1
    side = math.isqrt(n)
    if pos.ndim != 3 or side * side != n:
        raise ConversionError(f"{path}: 'pos_embed' has shape {pos.shape}; expected "
                              "(1, 1 + s*s, width) for a square patch grid.")
    depth = sd.count(r"blocks\.(\d+)\.")
    mlp_dim = int(_need(sd, "blocks.0.mlp.fc1.weight", path).shape[0])
    pretrain = "decoder_embed.weight" in sd

    heads = overrides.pop("num_heads", None)
    if model_name is not None:
        ref = _named_vit(model_name, side * patch)
        got = dict(width=width, depth=depth, mlp_dim=mlp_dim, patch_size=patch)
        want = dict(width=ref.width, depth=ref.depth,
                    mlp_dim=ref.mlp_dim or int(ref.width * ref.mlp_ratio),
                    patch_size=_pair(ref.patch_size)[0])
        if got != want:
            raise ConversionError(f"{path} does not hold a {model_name}: checkpoint {got}, "
                                  f"{model_name} {want}.")
        heads = heads or ref.num_heads
    heads = heads or _default_heads(width, _MAE_ENCODER_HEADS, "num_heads")

    vit_kw: dict[str, Any] = dict(
        width=width, depth=depth, num_heads=int(heads), mlp_dim=mlp_dim, patch_size=patch,
        image_size=side * patch, in_channels=channels, layer_norm_eps=1e-6, act="gelu",
        qkv_bias="blocks.0.attn.qkv.bias" in sd, class_token=True, fused_qkv=False,
        pre_norm=False, norm_layer="layernorm", init_values=None, patch_bias=True)
    p = _Params(sd)

    if not pretrain:
        head = sd.tensors.get("head.weight")
        gap = "fc_norm.weight" in sd
        module = ViT(num_classes=0 if head is None else int(head.shape[0]),
                     pool="gap" if gap else "token", fc_norm=gap, posemb="learn", **vit_kw)
        p.conv("embedding", "patch_embed.proj")
        p.array("cls_token", "cls_token")
        p.array("pos_embed", "pos_embed")
        _mae_blocks(p, "blocks_", "blocks.", depth)
        if gap:
            p.norm("fc_norm", "fc_norm")
        else:
            p.norm("norm", "norm")
        if head is not None:
            p.dense("head", "head")
        return _finish(module, p, (_dummy_images(module),), {},
                       "ViT (MAE fine-tuned)", overrides)

    dw = _need(sd, "decoder_embed.weight", path)
    dec_width = int(dw.shape[0])
    dec_depth = sd.count(r"decoder_blocks\.(\d+)\.")
    dec_mlp = int(_need(sd, "decoder_blocks.0.mlp.fc1.weight", path).shape[0])
    dec_heads = overrides.pop("decoder_heads", None) or \
        _default_heads(dec_width, _MAE_DECODER_HEADS, "decoder_heads")
    encoder = ViT(num_classes=0, pool="token", fc_norm=False, posemb="sincos2d", **vit_kw)
    module = _build_mae(encoder, decoder_width=dec_width, decoder_depth=dec_depth,
                        decoder_heads=int(dec_heads), decoder_mlp_dim=dec_mlp,
                        mask_ratio=float(overrides.pop("mask_ratio", 0.75)),
                        norm_pix_loss=bool(overrides.pop("norm_pix_loss", True)))
    p.conv("encoder/embedding", "patch_embed.proj")
    p.array("encoder/cls_token", "cls_token")
    value = sd.take("pos_embed")
    if check_posemb:
        _check_posemb(value, "pos_embed", encoder.base_grid, width)
    _mae_blocks(p, "encoder/blocks_", "blocks.", depth)
    p.norm("encoder/norm", "norm")
    p.dense("decoder_embed", "decoder_embed")
    p.array("mask_token", "mask_token")
    value = sd.take("decoder_pos_embed", optional=True)
    if check_posemb:
        _check_posemb(value, "decoder_pos_embed", encoder.base_grid, dec_width)
    _mae_blocks(p, "decoder_blocks_", "decoder_blocks.", dec_depth)
    p.norm("decoder_norm", "decoder_norm")
    p.dense("decoder_pred", "decoder_pred")
    args, kwargs = _mae_init_args(module)
    return _finish(module, p, args, kwargs, "MAE (pre-training)", overrides)


__all__ = ["SUPPORTED_HF_ARCHITECTURES", "ConversionError", "load_hf", "save_hf",
           "load_mae_checkpoint"]
