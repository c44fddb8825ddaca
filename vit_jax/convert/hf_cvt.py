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

from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.convert.hf_vit import CLASSIFIER, _num_labels
from vit_jax.convert.tables import QKV, Row, block_rows, export_rows, import_rows, repeat, scoped
from vit_jax.convert.weights import (ConversionError, Params, PathLike, StateDict, Variables,
                                     _check_against, finish, pair, read_hf_weights,
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

# HF CvT's block: HF ViT's BERT-style names with q / k / v as projection_*, each fed by a
# depthwise conv + BatchNorm (its running statistics in "batch_stats").
_PROJ = {"q": "query", "k": "key", "v": "value"}
_CVT_BLOCK = block_rows(qkv=[f"attention.attention.projection_{n}" for n in QKV]) + tuple(
    row for s, full in _PROJ.items() for row in scoped(
        (Row("conv", "convolution", "conv"), Row("bn", "normalization", "norm"),
         Row("bn", "normalization", "bn_stats", collection="batch_stats")),
        f"attn/conv_{s}/", f"attention.attention.convolution_projection_{full}"
        ".convolution_projection."))


def cvt_rows(module: CvT) -> tuple[tuple[Row, ...], tuple[Row, ...]]:
    """The key table of HF's CvT for a CvT module: (the rows under CvtForImageClassification's
    `cvt.` prefix (all of CvtModel), the rows outside it (final norm, head))."""
    rows: list[Row] = []
    for i in range(len(module.widths)):
        stage = (Row(f"stage_{i}_embed_conv", "embedding.convolution_embeddings.projection",
                     "conv"),
                 Row(f"stage_{i}_embed_norm", "embedding.convolution_embeddings.normalization",
                     "norm"),
                 *((Row(f"stage_{i}_cls_token", "cls_token"),) if module.class_token[i] else ()),
                 *repeat(_CVT_BLOCK, module.depths[i], f"stage_{i}_blocks_{{}}/", "layers.{}."))
        rows += scoped(stage, theirs=f"encoder.stages.{i}.")
    top = ((Row("norm", "layernorm", "norm"),) if module.final_norm else ()) + \
        (CLASSIFIER if module.num_classes > 0 else ())
    return tuple(rows), top


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
    return CvT(num_classes=_num_labels(cfg) if classify else 0, in_channels=int(cfg["num_channels"]),
               widths=t("embed_dim"), depths=t("depth"), num_heads=t("num_heads"),
               mlp_ratio=t("mlp_ratio", float), patch_sizes=t("patch_sizes"),
               patch_strides=t("patch_stride"), patch_paddings=t("patch_padding"),
               kernel_qkv=t("kernel_qkv"), stride_q=t("stride_q"), stride_kv=t("stride_kv"),
               padding_q=t("padding_q"), padding_kv=t("padding_kv"),
               class_token=t("cls_token", bool), qkv_bias=t("qkv_bias", bool),
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
    backbone, top = cvt_rows(module)
    import_rows(backbone + top, {"params": p, "batch_stats": stats})
    sd.drop(r".*\.num_batches_tracked")  # torch's BatchNorm step counter: unused in eval

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
    n = len(module.widths)
    if module.act != "gelu":
        bad.append(f"act={module.act!r} (HF CvT's MLP is exact GELU)")
    if module.layer_norm_eps != 1e-5 or module.bn_eps != 1e-5:
        bad.append("layer_norm_eps / bn_eps other than 1e-5 (HF uses torch's defaults)")
    if any(bool(c) for c in tuple(module.class_token)[:-1]):
        bad.append("a class token before the last stage (HF sizes it for the last stage)")
    if module.num_classes > 0 and not module.final_norm:
        bad.append("final_norm=False with a head (HF's classifier always has its layernorm)")
    if module.bn_momentum != 0.9:
        bad.append(f"bn_momentum={module.bn_momentum} (HF uses torch's 0.1, i.e. 0.9 here)")
    for name in ("depths", "num_heads", "mlp_ratio", "patch_sizes", "patch_strides",
                 "patch_paddings", "kernel_qkv", "stride_q", "stride_kv", "padding_q",
                 "padding_kv", "class_token"):
        value = getattr(module, name)
        # mlp_ratio may be one value for every stage (written out per stage by _stage_list)
        if name == "mlp_ratio" and not isinstance(value, (list, tuple)):
            continue
        if len(tuple(value)) != n:
            bad.append(f"{name} does not have one entry per stage")
    return bad


def _stage_list(value: Any, n: int, fn: Any) -> list:
    return [fn(v) for v in value] if isinstance(value, (list, tuple)) else [fn(value)] * n


def to_hf_state(module: CvT, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """vit_jax CvT variables ({"params", "batch_stats"}) -> HF CvT tensors: a
    CvtForImageClassification's when there is a head or a final norm, else a CvtModel's."""
    classify = module.num_classes > 0 or module.final_norm
    backbone, top = cvt_rows(module)
    return export_rows(scoped(backbone, theirs="cvt." if classify else "") + top,
                       {c: variables[c] for c in ("params", "batch_stats")},
                       type(module).__name__)


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
    classify = module.num_classes > 0 or module.final_norm
    out = to_hf_state(module, variables)
    n = len(module.widths)
    lst = lambda v, fn=int: _stage_list(v, n, fn)  # noqa: E731
    cfg: dict[str, Any] = {
        "architectures": ["CvtForImageClassification" if classify else "CvtModel"],
        "model_type": "cvt", "num_channels": module.in_channels,
        "embed_dim": lst(module.widths), "depth": lst(module.depths),
        "num_heads": lst(module.num_heads),
        "mlp_ratio": lst(module.mlp_ratio, float), "patch_sizes": lst(module.patch_sizes),
        "patch_stride": lst(module.patch_strides), "patch_padding": lst(module.patch_paddings),
        "kernel_qkv": lst(module.kernel_qkv), "stride_q": lst(module.stride_q),
        "stride_kv": lst(module.stride_kv), "padding_q": lst(module.padding_q),
        "padding_kv": lst(module.padding_kv), "cls_token": lst(module.class_token, bool),
        "qkv_bias": lst(module.qkv_bias, bool), "qkv_projection_method": ["dw_bn"] * n,
        "drop_rate": lst(module.dropout, float),
        "attention_drop_rate": lst(module.attn_dropout, float),
        "drop_path_rate": lst(module.drop_path_rate, float),
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "dtype": "float32",
    }
    return write_hf_folder(folder, cfg, out, module.num_classes if classify else None, id2label)


__all__ = ["cvt_rows", "load_cvt", "save_cvt_hf", "to_hf_state"]
