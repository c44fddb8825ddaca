"""Hugging Face CvT: import of CvtModel / CvtForImageClassification folders, including the
BatchNorm running statistics of the convolutional projections ("batch_stats").

What each architecture becomes (float32 eval mode, train=False):
    CvtModel                   CvT(num_classes=0, final_norm=False): HF's CvtModel has no
                               norm after the last stage.  aux["encoded"] ==
                               concat(cls_token_value, last_hidden_state as (B, h*w, C)) (the
                               class token first; without a last-stage class token just the
                               tokens); aux["stages"][i] == hidden_states[i] as NHWC.
    CvtForImageClassification  CvT(num_classes=num_labels, final_norm=True): out == logits;
                               HF's `layernorm` is our final `norm`.

Quirks of transformers' CvT that the import follows (it states what HF computes):
    - every LayerNorm uses eps 1e-5 (nn.LayerNorm's default): config.json's layer_norm_eps
      (1e-12 by default) is not used by HF's modeling code, so it is ignored here too;
    - the MLP activation is exact GELU (nn.GELU()); the official CvT code uses QuickGELU;
    - BatchNorm eps 1e-5, momentum 0.1 (flax 0.9); num_batches_tracked is ignored.

Export: `save_cvt_hf(module, variables, folder)` writes a CvT back as a CvtModel
(num_classes == 0 and final_norm=False) or CvtForImageClassification folder (otherwise;
num_classes == 0 with the final norm gives num_labels=0, whose "logits" are our pooled
features), BatchNorm running statistics included.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.convert.weights import (ConversionError, Params, PathLike, StateDict, Variables,
                                     _check_against, finish, flatten, pair, read_hf_weights,
                                     write_hf_folder)
from vit_jax.models.cvt import CvT

# HF CvtConfig defaults for keys absent from config.json.
_HF_DEFAULTS: dict[str, Any] = dict(
    num_channels=3, patch_sizes=[7, 3, 3], patch_stride=[4, 2, 2], patch_padding=[2, 1, 1],
    embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 2, 10], mlp_ratio=[4.0, 4.0, 4.0],
    attention_drop_rate=[0.0, 0.0, 0.0], drop_rate=[0.0, 0.0, 0.0],
    drop_path_rate=[0.0, 0.0, 0.1], qkv_bias=[True, True, True],
    cls_token=[False, False, True], qkv_projection_method=["dw_bn", "dw_bn", "dw_bn"],
    kernel_qkv=[3, 3, 3], padding_kv=[1, 1, 1], stride_kv=[2, 2, 2], padding_q=[1, 1, 1],
    stride_q=[1, 1, 1])

# (vit_jax block sub-path, HF layer sub-key, kind).
_PROJ = {"q": "query", "k": "key", "v": "value"}
_HF_BLOCK = tuple(
    [("norm1", "layernorm_before", "norm"), ("norm2", "layernorm_after", "norm"),
     ("attn/out", "attention.output.dense", "dense"),
     ("mlp/fc1", "intermediate.dense", "dense"), ("mlp/fc2", "output.dense", "dense")]
    + [(f"attn/{full}", f"attention.attention.projection_{full}", "dense")
       for full in _PROJ.values()]
    + [(f"attn/conv_{s}/conv", f"attention.attention.convolution_projection_{full}"
        ".convolution_projection.convolution", "conv") for s, full in _PROJ.items()]
    + [(f"attn/conv_{s}/bn", f"attention.attention.convolution_projection_{full}"
        ".convolution_projection.normalization", "norm") for s, full in _PROJ.items()])
# BatchNorm running statistics: (vit_jax bn sub-path, HF normalization sub-key).
_HF_BN = tuple((f"attn/conv_{s}/bn", f"attention.attention.convolution_projection_{full}"
                ".convolution_projection.normalization") for s, full in _PROJ.items())


def _cvt_from_hf(cfg: Mapping[str, Any], arch: str) -> CvT:
    methods = list(cfg["qkv_projection_method"])
    if any(m != "dw_bn" for m in methods):
        raise ConversionError(f"qkv_projection_method {methods} is not supported; vit_jax's CvT "
                              "implements 'dw_bn' (depthwise conv + BatchNorm) only.")
    n = len(cfg["embed_dim"])
    t = lambda key, f=int: tuple(f(v) for v in cfg[key])  # noqa: E731
    lengths = {k: len(cfg[k]) for k in _HF_DEFAULTS if isinstance(cfg[k], (list, tuple))}
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise ConversionError(f"config.json: per-stage entries {bad} do not match the {n} stages "
                              "of embed_dim.")
    classify = arch == "CvtForImageClassification"
    num_classes = 0
    if classify:
        num_classes = len(cfg["id2label"]) if "id2label" in cfg else int(cfg.get("num_labels", 2))
    return CvT(num_classes=num_classes, in_channels=int(cfg["num_channels"]),
               dims=t("embed_dim"), depths=t("depth"), heads=t("num_heads"),
               mlp_ratios=t("mlp_ratio", float), patch_sizes=t("patch_sizes"),
               patch_strides=t("patch_stride"), patch_paddings=t("patch_padding"),
               kernel_qkv=t("kernel_qkv"), stride_q=t("stride_q"), stride_kv=t("stride_kv"),
               padding_q=t("padding_q"), padding_kv=t("padding_kv"),
               cls_token=t("cls_token", bool), qkv_bias=t("qkv_bias", bool),
               dropout=t("drop_rate", float), attn_dropout=t("attention_drop_rate", float),
               drop_path_rate=t("drop_path_rate", float), act="gelu", layer_norm_eps=1e-5,
               bn_momentum=0.9, bn_eps=1e-5, final_norm=classify)


def _canonical(tensors: Mapping[str, Any]) -> dict[str, Any]:
    # CvtForImageClassification nests the backbone under `cvt.`; CvtModel has no prefix.
    return {(k[len("cvt."):] if k.startswith("cvt.") else k): v for k, v in tensors.items()}


def load_cvt(folder: Path, cfg: Mapping[str, Any], arch: str, overrides: dict,
             check_posemb: bool) -> tuple[nn.Module, Variables]:
    """CvtModel / CvtForImageClassification folder -> (CvT, {"params", "batch_stats"})."""
    del check_posemb  # CvT has no position embedding
    cfg = {**_HF_DEFAULTS, **cfg}
    module = _cvt_from_hf(cfg, arch)
    sd = StateDict(_canonical(read_hf_weights(folder)), str(folder))
    p, stats = Params(sd), Params(sd)
    for i in range(len(module.dims)):
        src = f"encoder.stages.{i}."
        p.conv(f"stage_{i}_embed_conv", f"{src}embedding.convolution_embeddings.projection")
        p.norm(f"stage_{i}_embed_norm", f"{src}embedding.convolution_embeddings.normalization")
        if module.cls_token[i]:
            p.array(f"stage_{i}_cls_token", f"{src}cls_token")
        for j in range(module.depths[i]):
            for dst, key, kind in _HF_BLOCK:
                getattr(p, kind)(f"stage_{i}_blocks_{j}/{dst}", f"{src}layers.{j}.{key}")
            for dst, key in _HF_BN:
                for ours, theirs in (("mean", "running_mean"), ("var", "running_var")):
                    stats.array(f"stage_{i}_blocks_{j}/{dst}/{ours}",
                                f"{src}layers.{j}.{key}.{theirs}")
    sd.drop(r".*\.num_batches_tracked")  # torch's BatchNorm step counter: unused in eval
    if module.final_norm:
        p.norm("norm", "layernorm")
    if module.num_classes > 0:
        p.dense("head", "classifier")

    h, w = pair(module.image_size)
    images = jax.ShapeDtypeStruct((1, h, w, module.in_channels), jnp.float32)
    module, variables = finish(module, p, (images,), {}, arch, overrides)
    expected = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                              images)["batch_stats"]
    _check_against(stats, expected, f"{arch} batch_stats")
    variables["batch_stats"] = jax.tree.map(jnp.asarray, stats.tree())
    return module, variables


# ============================================================================ export

def _hf_unsupported(module: CvT) -> list[str]:
    """Settings of a vit_jax CvT that transformers' CvT cannot express."""
    bad = []
    n = len(module.dims)
    if module.act != "gelu":
        bad.append(f"act={module.act!r} (HF CvT's MLP is exact GELU)")
    if module.layer_norm_eps != 1e-5 or module.bn_eps != 1e-5:
        bad.append("layer_norm_eps / bn_eps other than 1e-5 (HF uses torch's defaults)")
    if any(bool(c) for c in tuple(module.cls_token)[:-1]):
        bad.append("a class token before the last stage (HF sizes it for the last stage)")
    if module.num_classes > 0 and not module.final_norm:
        bad.append("final_norm=False with a head (HF's classifier always has its layernorm)")
    if module.bn_momentum != 0.9:
        bad.append(f"bn_momentum={module.bn_momentum} (HF uses torch's 0.1, i.e. 0.9 here)")
    for name in ("depths", "heads", "mlp_ratios", "patch_sizes", "patch_strides",
                 "patch_paddings", "kernel_qkv", "stride_q", "stride_kv", "padding_q",
                 "padding_kv", "cls_token"):
        if len(tuple(getattr(module, name))) != n:
            bad.append(f"{name} does not have one entry per stage")
    return bad


def _stage_list(value: Any, n: int, fn: Any) -> list:
    return [fn(v) for v in value] if isinstance(value, (list, tuple)) else [fn(value)] * n


def save_cvt_hf(module: nn.Module, variables: Mapping[str, Any], folder: PathLike,
                id2label: Mapping[int, str] | None = None) -> Path:
    """Write a vit_jax CvT as a Hugging Face folder (config.json + model.safetensors).

    variables: {"params", "batch_stats"}.  See the module docstring for which architecture
    is written.  Raises ConversionError for settings HF's CvT cannot express.
    """
    if not isinstance(module, CvT):
        raise ConversionError(
            f"save_cvt_hf writes vit_jax CvT models; got {type(module).__name__}.")
    bad = _hf_unsupported(module)
    if bad:
        raise ConversionError("Hugging Face's CvT cannot express: " + "; ".join(bad) + ".")
    if "batch_stats" not in variables:
        raise ConversionError("variables need the BatchNorm running statistics ('batch_stats').")
    params = flatten(variables["params"])
    stats = flatten(variables["batch_stats"])
    classify = module.num_classes > 0 or module.final_norm
    prefix = "cvt." if classify else ""
    out: dict[str, np.ndarray] = {}

    def get(tree: dict, key: str) -> np.ndarray:
        if key not in tree:
            raise ConversionError(
                f"variables have no {key!r}; is this {type(module).__name__}'s tree?")
        return np.asarray(tree[key], np.float32)

    def put(kind: str, dst: str, src: str) -> None:
        if kind == "dense":
            out[f"{src}.weight"] = get(params, f"{dst}/kernel").T
            if f"{dst}/bias" in params:
                out[f"{src}.bias"] = get(params, f"{dst}/bias")
        elif kind == "conv":  # flax (kh, kw, in, out) -> torch (out, in, kh, kw)
            out[f"{src}.weight"] = get(params, f"{dst}/kernel").transpose(3, 2, 0, 1)
            if f"{dst}/bias" in params:
                out[f"{src}.bias"] = get(params, f"{dst}/bias")
        elif kind == "norm":
            out[f"{src}.weight"] = get(params, f"{dst}/scale")
            out[f"{src}.bias"] = get(params, f"{dst}/bias")
        else:
            out[src] = get(params, dst)

    n = len(module.dims)
    for i in range(n):
        src = f"{prefix}encoder.stages.{i}."
        put("conv", f"stage_{i}_embed_conv", f"{src}embedding.convolution_embeddings.projection")
        put("norm", f"stage_{i}_embed_norm", f"{src}embedding.convolution_embeddings.normalization")
        if module.cls_token[i]:
            put("array", f"stage_{i}_cls_token", f"{src}cls_token")
        for j in range(module.depths[i]):
            for dst, key, kind in _HF_BLOCK:
                put(kind, f"stage_{i}_blocks_{j}/{dst}", f"{src}layers.{j}.{key}")
            for dst, key in _HF_BN:
                base = f"{src}layers.{j}.{key}"
                out[f"{base}.running_mean"] = get(stats, f"stage_{i}_blocks_{j}/{dst}/mean")
                out[f"{base}.running_var"] = get(stats, f"stage_{i}_blocks_{j}/{dst}/var")
                out[f"{base}.num_batches_tracked"] = np.zeros((), np.int64)
    if classify:
        put("norm", "norm", "layernorm")
        if module.num_classes > 0:
            put("dense", "head", "classifier")

    lst = lambda v, fn=int: _stage_list(v, n, fn)  # noqa: E731
    cfg: dict[str, Any] = {
        "architectures": ["CvtForImageClassification" if classify else "CvtModel"],
        "model_type": "cvt", "num_channels": module.in_channels,
        "embed_dim": lst(module.dims), "depth": lst(module.depths), "num_heads": lst(module.heads),
        "mlp_ratio": lst(module.mlp_ratios, float), "patch_sizes": lst(module.patch_sizes),
        "patch_stride": lst(module.patch_strides), "patch_padding": lst(module.patch_paddings),
        "kernel_qkv": lst(module.kernel_qkv), "stride_q": lst(module.stride_q),
        "stride_kv": lst(module.stride_kv), "padding_q": lst(module.padding_q),
        "padding_kv": lst(module.padding_kv), "cls_token": lst(module.cls_token, bool),
        "qkv_bias": lst(module.qkv_bias, bool), "qkv_projection_method": ["dw_bn"] * n,
        "drop_rate": lst(module.dropout, float),
        "attention_drop_rate": lst(module.attn_dropout, float),
        "drop_path_rate": lst(module.drop_path_rate, float),
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "dtype": "float32",
    }
    return write_hf_folder(folder, cfg, out, module.num_classes if classify else None, id2label)


__all__ = ["load_cvt", "save_cvt_hf"]
