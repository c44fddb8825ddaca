"""Hugging Face DINOv2: import of Dinov2Model folders.  What it becomes: see vit_jax.convert.

DINOv2 is a ViT with layer scale (`layer_scale{1,2}.lambda1` -> blocks_i/ls{1,2}/gamma), a
final LayerNorm on all tokens, patch 14 by default, and position embeddings resized with
torch's bicubic kernel whenever the patch grid differs from the stored one (HF always does).
Not supported: use_swiglu_ffn=True (the SwiGLU MLP of DINOv2 ViT-g/14), a head_dim other than
hidden_size / num_attention_heads.  The mask token (`embeddings.mask_token`, only used for
masked inputs) is dropped.  drop_path_rate is not carried over: HF applies the same rate in
every block, vit_jax a linear schedule (pass drop_path_rate=... as an override to train).

Reusable pieces (e.g. for DINOv2 weights from another container, such as an ONNX export that
keeps HF's names under its own prefix):
    dinov2_canonical(tensors, source, prefix="dinov2.") -> dict[str, np.ndarray]
        Strips `prefix` and maps transformers >= 5 module names (attention.q_proj / o_proj)
        onto the checkpoint layout (attention.attention.query / attention.output.dense).
    dinov2_params(sd: StateDict, depth: int) -> Params
        ViT params from a StateDict whose keys are HF Dinov2Model names without prefix
        (canonical layout); consumes (drops) embeddings.mask_token.  Pass the result to
        weights.finish(module, params, ...) to check names / shapes and get the variables.
    dinov2_fields(cfg) -> dict
        ViT fields of a Dinov2Config dict (HF defaults for absent keys); raises
        ConversionError for SwiGLU.
    dinov2_vit(**fields) -> ViT
        A ViT with DINOv2's architecture (num_classes=0, class-token pooling, layer scale,
        bicubic pos-emb resizing, final norm, no norm_pre / fc_norm); `fields` set the sizes
        (width, depth, num_heads, mlp_dim, image_size, patch_size), layer_norm_eps,
        init_values, act, qkv_bias, and may override any other ViT field (dtype, scan, ...).
        Defaults are HF's Dinov2Config: ViT-B/14 at 224, eps 1e-6, init_values 1.0, gelu.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vit_jax.convert.hf_vit import _hf_act, vit_rows
from vit_jax.convert.tables import QKV, Row, block_rows, import_rows
from vit_jax.convert.weights import (ConversionError, Params, StateDict, Variables, canonical_keys,
                                     dummy_images, finish, pair, read_hf_weights)
from vit_jax.models.vit import ViT

# HF Dinov2Config defaults (configuration_dinov2.py) for keys absent from config.json.
_HF_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
    hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    layer_norm_eps=1e-6, image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
    layerscale_value=1.0, use_swiglu_ffn=False)

# DINOv2's architecture as ViT fields; the sizes default to HF's Dinov2Config.
_DINOV2_VIT: dict[str, Any] = dict(
    num_classes=0, pool="token", class_token=True, posemb="learn", posemb_interp="bicubic",
    pre_norm=False, final_norm=True, fc_norm=False, patch_bias=True, head_bias=True,
    norm_layer="layernorm", fused_qkv=False, qkv_bias=True,
    width=768, depth=12, num_heads=12, mlp_dim=3072, image_size=224, patch_size=14,
    in_channels=3, layer_norm_eps=1e-6, init_values=1.0, act="gelu")

# HF DINOv2's layer: HF ViT's attention names, timm's norm / MLP names, and layer scale.
_DINOV2_BLOCK = block_rows(qkv=[f"attention.attention.{n}" for n in QKV],
                           norms=("norm1", "norm2"), mlp=("mlp.fc1", "mlp.fc2"),
                           layer_scale=("layer_scale1.lambda1", "layer_scale2.lambda1"))


def dinov2_rows(depth: int) -> tuple[Row, ...]:
    """The key table of HF's Dinov2Model (no prefix): HF ViT's encoder with DINOv2's layers."""
    return vit_rows(depth, _DINOV2_BLOCK)


# transformers >= 5 module names (a raw state_dict) -> the file layout transformers writes.
_HF_RENAMES = ((r"\.attention\.q_proj\.", ".attention.attention.query."),
               (r"\.attention\.k_proj\.", ".attention.attention.key."),
               (r"\.attention\.v_proj\.", ".attention.attention.value."),
               (r"\.attention\.o_proj\.", ".attention.output.dense."))


def dinov2_canonical(tensors: Mapping[str, np.ndarray], source: Path | str,
                     prefix: str = "dinov2.") -> dict[str, np.ndarray]:
    """Strip `prefix` and map newer HF module names onto the checkpoint layout."""
    return canonical_keys(tensors, source, prefix, _HF_RENAMES)


def dinov2_vit(**fields: Any) -> ViT:
    """A ViT with DINOv2's architecture; see the module docstring."""
    return ViT(**{**_DINOV2_VIT, **fields})


def dinov2_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """dinov2_vit fields of a Dinov2Config dict (HF defaults for absent keys)."""
    cfg = {**_HF_DEFAULTS, **cfg}
    if cfg["use_swiglu_ffn"]:
        raise ConversionError(
            "use_swiglu_ffn=true: the SwiGLU MLP of DINOv2 ViT-g/14 (gate_proj / up_proj / "
            "down_proj) is not supported; vit_jax's ViT has a plain fc1 -> act -> fc2 MLP.")
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != width:
        raise ConversionError(f"head_dim={head_dim} with {heads} heads != hidden_size={width}: "
                              "vit_jax's attention needs heads * head_dim == width.")
    image, patch = pair(cfg["image_size"]), pair(cfg["patch_size"])
    # HF's grid is image // patch (floored): size the pos-emb grid the same way.
    image = (image[0] // patch[0] * patch[0], image[1] // patch[1] * patch[1])
    return dict(width=width, depth=int(cfg["num_hidden_layers"]), num_heads=heads,
                mlp_dim=int(width * cfg["mlp_ratio"]),
                image_size=image[0] if image[0] == image[1] else image,
                patch_size=patch[0] if patch[0] == patch[1] else patch,
                in_channels=int(cfg["num_channels"]), layer_norm_eps=float(cfg["layer_norm_eps"]),
                init_values=float(cfg["layerscale_value"]), act=_hf_act(cfg),
                qkv_bias=bool(cfg["qkv_bias"]), dropout=float(cfg["hidden_dropout_prob"]),
                attn_dropout=float(cfg["attention_probs_dropout_prob"]))


def dinov2_params(sd: StateDict, depth: int) -> Params:
    """ViT params (unscanned layout) from HF Dinov2Model names without prefix; see the
    module docstring.  Missing keys are recorded in `sd` (sd.finish() / finish() report them)."""
    p = Params(sd)
    import_rows(dinov2_rows(depth), p)
    sd.drop(r"embeddings\.mask_token")  # only used for masked inputs (bool_masked_pos)
    return p


def load_dinov2(folder: Path, cfg: Mapping[str, Any], arch: str, overrides: dict,
                check_posemb: bool) -> tuple[nn.Module, Variables]:
    """Dinov2Model folder -> ViT (see vit_jax.convert).  check_posemb: unused (learned)."""
    del check_posemb
    module = dinov2_vit(**dinov2_fields(cfg))
    sd = StateDict(dinov2_canonical(read_hf_weights(folder), folder), str(folder))
    p = dinov2_params(sd, module.depth)
    return finish(module, p, (dummy_images(module),), {}, arch, overrides)
