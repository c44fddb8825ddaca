"""Hugging Face ViT / ViTMAE: import (ViTModel, ViTForImageClassification, ViTMAEModel,
ViTMAEForPreTraining folders) and export (`save_hf`: a vit_jax ViT -> ViTModel or
ViTForImageClassification folder).  What each architecture becomes: see vit_jax.convert.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vit_jax.convert.tables import (QKV, Row, block_rows, export_rows, import_rows, repeat,
                                    scoped)
from vit_jax.convert.weights import (ConversionError, Params, PathLike, StateDict, Variables,
                                     canonical_keys, check_fixed_posemb, dummy_images, finish,
                                     flatten, mae_init_args, make_mae, pair, read_hf_weights,
                                     write_hf_folder)
from vit_jax.models.vit import ViT, unscan_params

# ============================================================================ import

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

# HF ViT's transformer block: the BERT-style names (Swin and CvT share all but q / k / v).
VIT_BLOCK = block_rows(qkv=[f"attention.attention.{n}" for n in QKV])


def vit_rows(depth: int, block: tuple[Row, ...] = VIT_BLOCK,
             learned_posemb: bool = True) -> tuple[Row, ...]:
    """The key table of an HF ViT-style encoder (ViT, ViTMAE, DINOv2; no `vit.` prefix, no
    head).  learned_posemb=False leaves out ViTMAE's fixed table (not a parameter here)."""
    posemb = (Row("pos_embed", "embeddings.position_embeddings"),) if learned_posemb else ()
    return (Row("embedding", "embeddings.patch_embeddings.projection", "conv"),
            Row("cls_token", "embeddings.cls_token"), *posemb,
            *repeat(block, depth, "blocks_{}/", "encoder.layer.{}."),
            Row("norm", "layernorm", "norm"))


def mae_decoder_rows(depth: int, block: tuple[Row, ...], layers: str) -> tuple[Row, ...]:
    """vit_jax.models.mae.MAE's decoder (its fixed pos-emb left out) under MAE's names, which
    HF's ViTMAEForPreTraining keeps under `decoder.`; `layers`: the blocks' key."""
    return (Row("decoder_embed", "decoder_embed", "dense"), Row("mask_token", "mask_token"),
            *repeat(block, depth, "decoder_blocks_{}/", layers + ".{}."),
            Row("decoder_norm", "decoder_norm", "norm"),
            Row("decoder_pred", "decoder_pred", "dense"))


def mae_rows(module: nn.Module) -> tuple[Row, ...]:
    """The key table of HF's ViTMAEForPreTraining (no `vit.` prefix) for an MAE module."""
    return (scoped(vit_rows(module.encoder.depth, learned_posemb=False), ours="encoder/")
            + scoped(mae_decoder_rows(module.decoder_depth, VIT_BLOCK, "decoder_layers"),
                     theirs="decoder."))


# The classification head of every HF *ForImageClassification (outside the backbone's prefix).
CLASSIFIER = (Row("head", "classifier", "dense"),)

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
    return canonical_keys(tensors, folder, "vit.", _HF_RENAMES)


def _read_folder(folder: Path, cfg: Mapping[str, Any]) -> tuple[dict, StateDict]:
    """config.json with HF's defaults for absent keys, and the tensors under checkpoint names."""
    cfg = {**_HF_DEFAULTS, **cfg}
    return cfg, StateDict(_hf_canonical(read_hf_weights(folder), folder), str(folder))


def _hf_act(cfg: Mapping[str, Any]) -> str:
    act = cfg["hidden_act"]
    if act not in _HF_ACTS:
        raise ConversionError(f"hidden_act {act!r} is not supported; vit_jax maps "
                              f"{sorted(_HF_ACTS)}.")
    return _HF_ACTS[act]


def _vit_fields_from_hf(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """ViT fields shared by the HF ViT and ViTMAE encoders."""
    image, patch = pair(cfg["image_size"]), pair(cfg["patch_size"])
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


def _check_posemb(p: Params, key: str, grid: tuple[int, int], dim: int, check: bool) -> None:
    """Consume a stored fixed sin-cos table (recomputed here), checking it if asked."""
    value = p.sd.take(key, optional=True)
    if check:
        check_fixed_posemb(value, key, grid, dim)


def _num_labels(cfg: Mapping[str, Any]) -> int:
    if "id2label" in cfg:
        return len(cfg["id2label"])
    return int(cfg.get("num_labels", 2))  # HF's PretrainedConfig default


def load_vit(folder: Path, cfg: Mapping[str, Any], arch: str, overrides: dict,
             check_posemb: bool) -> tuple[nn.Module, Variables]:
    """ViTModel / ViTForImageClassification / ViTMAEModel folder -> ViT (see vit_jax.convert)."""
    cfg, sd = _read_folder(folder, cfg)
    classify = arch == "ViTForImageClassification"
    mae = arch == "ViTMAEModel"
    module = ViT(num_classes=_num_labels(cfg) if classify else 0,
                 posemb="sincos2d" if mae else "learn", **_vit_fields_from_hf(cfg))
    p = Params(sd)
    import_rows(vit_rows(module.depth, learned_posemb=not mae) + (CLASSIFIER if classify else ()), p)
    if mae:
        _check_posemb(p, "embeddings.position_embeddings", module.base_grid, module.width,
                      check_posemb)
    if not classify:
        sd.drop(r"pooler\.dense\.(weight|bias)")   # HF's dense+tanh pooler: no counterpart
    sd.drop(r"embeddings\.mask_token")              # only used by masked-image-modeling heads
    return finish(module, p, (dummy_images(module),), {}, arch, overrides)


def load_vit_mae_pretraining(folder: Path, cfg: Mapping[str, Any], arch: str, overrides: dict,
                             check_posemb: bool) -> tuple[nn.Module, Variables]:
    """ViTMAEForPreTraining folder -> vit_jax.models.mae.MAE (see vit_jax.convert)."""
    cfg, sd = _read_folder(folder, cfg)
    encoder = ViT(num_classes=0, posemb="sincos2d", **_vit_fields_from_hf(cfg))
    module = make_mae(encoder, decoder_width=int(cfg["decoder_hidden_size"]),
                      decoder_depth=int(cfg["decoder_num_hidden_layers"]),
                      decoder_heads=int(cfg["decoder_num_attention_heads"]),
                      decoder_mlp_dim=int(cfg["decoder_intermediate_size"]),
                      mask_ratio=float(cfg["mask_ratio"]),
                      norm_pix_loss=bool(cfg["norm_pix_loss"]))
    p = Params(sd)
    import_rows(mae_rows(module), p)
    _check_posemb(p, "embeddings.position_embeddings", encoder.base_grid, encoder.width,
                  check_posemb)
    _check_posemb(p, "decoder.decoder_pos_embed", encoder.base_grid, module.decoder_width,
                  check_posemb)
    args, kwargs = mae_init_args(module)
    return finish(module, p, args, kwargs, arch, overrides)


# ============================================================================ save_hf

def _hf_unsupported(module: ViT) -> list[str]:
    """Settings of a vit_jax ViT that transformers' ViT cannot express."""
    bad = []
    if module.pool != "token":
        bad.append(f"pool={module.pool!r} (HF ViT classifies from the class token)")
    if not module.class_token:
        bad.append("class_token=False (HF ViT always has a class token)")
    if module.dist_token:
        bad.append("dist_token=True (HF ViT has no distillation token; HF's DeiT, which has, is read "
                   "by load_hf but not written)")
    if module.posemb != "learn":
        bad.append(f"posemb={module.posemb!r} (HF ViT has a learned position embedding)")
    if module._use_fc_norm:
        bad.append("fc_norm=True (HF ViT has no norm on the pooled features)")
    if module.pre_norm:
        bad.append("pre_norm=True (HF ViT has no norm before the blocks)")
    if module.final_norm is not None and not module._final_norm:  # (gap pooling: see pool)
        bad.append("final_norm=False (HF ViT always applies its final layernorm to all tokens)")
    if module.num_classes > 0 and not module.head_bias:
        bad.append("head_bias=False (HF ViT's classifier has a bias)")
    # patch_bias=False is expressible: the export writes a zero patch-conv bias.
    if module.norm_layer != "layernorm":
        bad.append(f"norm_layer={module.norm_layer!r} (HF ViT uses LayerNorm)")
    if module.init_values is not None:
        bad.append(f"init_values={module.init_values} (HF ViT has no layer scale)")
    if module.act not in _TO_HF_ACTS:
        bad.append(f"act={module.act!r} (no Hugging Face activation of that name)")
    return bad


def _split_fused_qkv(flat: dict[str, np.ndarray], depth: int) -> None:
    """A fused qkv kernel (D, 3D), columns [q | k | v] -> HF ViT's separate query/key/value."""
    for i in range(depth):
        attn = f"blocks_{i}/attn"
        for leaf in ("kernel", "bias"):
            if f"{attn}/qkv/{leaf}" in flat:
                qkv = flat.pop(f"{attn}/qkv/{leaf}")
                d = qkv.shape[-1] // 3
                for j, name in enumerate(QKV):
                    flat[f"{attn}/{name}/{leaf}"] = qkv[..., j * d:(j + 1) * d]


def to_hf_state(module: ViT, params: Mapping) -> dict[str, np.ndarray]:
    """vit_jax ViT params -> HF ViT(Model|ForImageClassification) checkpoint tensors."""
    if "blocks" in params:  # scan layout
        params = unscan_params(dict(params))
    flat = dict(flatten(params))
    if module.fused_qkv:
        _split_fused_qkv(flat, module.depth)
    classify = module.num_classes > 0
    pre = "vit." if classify else ""
    rows = scoped(vit_rows(module.depth), theirs=pre) + (CLASSIFIER if classify else ())
    out = export_rows(rows, {"params": flat}, "a ViT")
    # HF's patch conv always has a bias: a zero one reproduces patch_bias=False exactly.
    kernel = out[f"{pre}embeddings.patch_embeddings.projection.weight"]
    out.setdefault(f"{pre}embeddings.patch_embeddings.projection.bias",
                   np.zeros(kernel.shape[0], np.float32))
    return out


def save_vit_hf(module: nn.Module, variables: Mapping[str, Any], folder: PathLike,
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
    tensors = to_hf_state(module, params)
    image, patch = pair(module.image_size), pair(module.patch_size)
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
    return write_hf_folder(folder, cfg, tensors, module.num_classes if classify else None, id2label)

