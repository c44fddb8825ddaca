"""Hugging Face Swin: import (SwinModel, SwinForImageClassification folders) and export
(`save_swin_hf`: a vit_jax Swin -> SwinModel or SwinForImageClassification folder).

What each architecture becomes (outputs agree in float32 eval mode):
    SwinModel                   Swin(num_classes=0); aux["encoded"] == last_hidden_state,
                                out == pooler_output (mean of the normed final tokens).
    SwinForImageClassification  Swin(num_classes=num_labels); out == logits.
Checkpoints are read under the hub names (`attention.self.query`, `intermediate.dense`, ...,
what transformers still writes) or the module names of transformers >= 5 (`attention.q_proj`,
`mlp.fc1`, `attention.relative_position_bias.relative_position_bias_table`, ...).
use_absolute_embeddings=True maps to Swin(ape=True) (embeddings.position_embeddings ->
absolute_pos_embed). Not supported: non-square patches.  Note: transformers 5.x builds every bias table for config.window_size,
so its own forward fails when a stage's resolution is below the window (it cannot clamp);
vit_jax clamps (reading the table's centre), which is what the official code does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from vit_jax.convert.hf_vit import _HF_ACTS, _TO_HF_ACTS, CLASSIFIER, _num_labels
from vit_jax.convert.tables import QKV, Row, block_rows, export_rows, import_rows, repeat, scoped
from vit_jax.convert.weights import (ConversionError, Params, PathLike, StateDict, Variables,
                                     canonical_keys, finish, read_hf_weights, write_hf_folder)
from vit_jax.models.swin import Swin

# HF SwinConfig defaults (configuration_swin.py) for keys absent from config.json.
_HF_DEFAULTS: dict[str, Any] = dict(
    image_size=224, patch_size=4, num_channels=3, embed_dim=96, depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0, qkv_bias=True,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.1,
    hidden_act="gelu", use_absolute_embeddings=False, layer_norm_eps=1e-5)

# HF Swin's block (hub layout): HF ViT's BERT-style names, q / k / v under attention.self,
# plus the relative position bias table.
_SWIN_BLOCK = block_rows(qkv=[f"attention.self.{n}" for n in QKV]) + (
    Row("attn/relative_position_bias_table", "attention.self.relative_position_bias_table"),)
_MERGE = (Row("norm", "norm", "norm"), Row("reduction", "reduction", "dense"))


def swin_rows(module: Swin) -> tuple[Row, ...]:
    """The key table of HF's SwinModel (no `swin.` prefix, no head) for a Swin module."""
    rows = [Row("patch_embed", "embeddings.patch_embeddings.projection", "conv"),
            Row("patch_norm", "embeddings.norm", "norm")]
    if module.ape:
        rows.append(Row("absolute_pos_embed", "embeddings.position_embeddings"))
    for i, depth in enumerate(module.depths):
        rows += repeat(_SWIN_BLOCK, depth, f"layers_{i}/blocks_{{}}/",
                       f"encoder.layers.{i}.blocks.{{}}.")
        if i < len(module.depths) - 1:  # every stage but the last ends with patch merging
            rows += scoped(_MERGE, f"layers_{i}/downsample/", f"encoder.layers.{i}.downsample.")
    return (*rows, Row("norm", "layernorm", "norm"))


# transformers >= 5 module names -> the hub checkpoint layout.
_HF_RENAMES = ((r"\.attention\.q_proj\.", ".attention.self.query."),
               (r"\.attention\.k_proj\.", ".attention.self.key."),
               (r"\.attention\.v_proj\.", ".attention.self.value."),
               (r"\.attention\.relative_position_bias\.relative_position_bias_table$",
                ".attention.self.relative_position_bias_table"),
               (r"\.attention\.o_proj\.", ".attention.output.dense."),
               (r"\.mlp\.fc1\.", ".intermediate.dense."),
               (r"\.mlp\.fc2\.", ".output.dense."))


def _canonical(tensors: Mapping[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    """Strip the `swin.` prefix and map newer HF module names onto the checkpoint layout."""
    return canonical_keys(tensors, folder, "swin.", _HF_RENAMES)


def _int(x: Any, what: str) -> int:
    """An int, or a square [n, n] pair (HF allows either for sizes)."""
    if isinstance(x, (list, tuple)):
        if len(x) != 2 or x[0] != x[1]:
            raise ConversionError(f"config.json {what}={x}: vit_jax's Swin needs a square size.")
        x = x[0]
    return int(x)


def _swin_fields_from_hf(cfg: Mapping[str, Any]) -> dict[str, Any]:
    act = cfg["hidden_act"]
    if act not in _HF_ACTS:
        raise ConversionError(f"config.json hidden_act={act!r} has no vit_jax counterpart; "
                              f"supported: {sorted(_HF_ACTS)}.")
    return dict(patch_size=_int(cfg["patch_size"], "patch_size"),
                width=int(cfg["embed_dim"]), depths=tuple(int(d) for d in cfg["depths"]),
                num_heads=tuple(int(h) for h in cfg["num_heads"]),
                window_size=_int(cfg["window_size"], "window_size"),
                mlp_ratio=float(cfg["mlp_ratio"]), qkv_bias=bool(cfg["qkv_bias"]),
                drop_path_rate=float(cfg["drop_path_rate"]),
                dropout=float(cfg["hidden_dropout_prob"]),
                attn_dropout=float(cfg["attention_probs_dropout_prob"]),
                layer_norm_eps=float(cfg["layer_norm_eps"]), act=_HF_ACTS[act],
                image_size=_int(cfg["image_size"], "image_size"),
                in_channels=int(cfg["num_channels"]),
                ape=bool(cfg["use_absolute_embeddings"]))


def load_swin(folder: Path, cfg: Mapping[str, Any], arch: str, overrides: dict,
              check_posemb: bool = True) -> tuple[nn.Module, Variables]:
    """SwinModel / SwinForImageClassification folder -> Swin (see the module docstring).

    check_posemb is accepted for the shared loader signature and unused (an absolute position
    embedding of another grid fails the shape check)."""
    cfg = {**_HF_DEFAULTS, **cfg}
    sd = StateDict(_canonical(read_hf_weights(folder), folder), str(folder))
    classify = arch == "SwinForImageClassification"
    module = Swin(num_classes=_num_labels(cfg) if classify else 0, **_swin_fields_from_hf(cfg))
    p = Params(sd)
    import_rows(swin_rows(module) + (CLASSIFIER if classify else ()), p)
    # Recomputed buffers (older files store them) and the SimMIM mask token: no parameters here.
    sd.drop(r".*relative_position_index")
    sd.drop(r"embeddings\.mask_token")
    p_ = module.patch_size
    images = jax.ShapeDtypeStruct((1, p_, p_, module.in_channels), np.float32)
    return finish(module, p, (images,), {}, arch, overrides)


# ============================================================================ export

def to_hf_state(module: Swin, params: Mapping) -> dict[str, np.ndarray]:
    """vit_jax Swin params -> HF Swin(Model|ForImageClassification) tensors (hub names)."""
    classify = module.num_classes > 0
    rows = scoped(swin_rows(module), theirs="swin." if classify else "") + \
        (CLASSIFIER if classify else ())
    return export_rows(rows, {"params": params}, "a Swin")


def save_swin_hf(module: Swin, variables: Mapping[str, Any], folder: PathLike,
                 id2label: Mapping[int, str] | None = None) -> Path:
    """Write a vit_jax Swin as a Hugging Face folder (config.json + model.safetensors).

    num_classes == 0 gives a SwinModel folder (last_hidden_state / pooler_output equal our
    aux["encoded"] / out), num_classes > 0 a SwinForImageClassification folder whose logits
    equal ours.  Weights are written as float32 under the hub names (what transformers
    itself writes).  Raises ConversionError for an activation Hugging Face has no name for.
    """
    if not isinstance(module, Swin):
        raise ConversionError("save_swin_hf writes vit_jax Swin models; "
                              f"got {type(module).__name__}.")
    if module.act not in _TO_HF_ACTS:
        raise ConversionError(f"Hugging Face's Swin cannot express act={module.act!r}.")
    params = variables["params"] if "params" in variables else variables
    tensors = to_hf_state(module, params)
    classify = module.num_classes > 0
    cfg: dict[str, Any] = {
        "architectures": ["SwinForImageClassification" if classify else "SwinModel"],
        "model_type": "swin",
        "image_size": module.image_size, "patch_size": module.patch_size,
        "num_channels": module.in_channels, "embed_dim": module.width,
        "depths": list(module.depths), "num_heads": list(module.num_heads),
        "window_size": module.window_size, "mlp_ratio": module.mlp_ratio,
        "qkv_bias": module.qkv_bias, "hidden_dropout_prob": module.dropout,
        "attention_probs_dropout_prob": module.attn_dropout,
        "drop_path_rate": module.drop_path_rate, "hidden_act": _TO_HF_ACTS[module.act],
        "use_absolute_embeddings": module.ape, "layer_norm_eps": module.layer_norm_eps,
        "initializer_range": 0.02, "encoder_stride": 32, "dtype": "float32",
    }
    return write_hf_folder(folder, cfg, tensors, module.num_classes if classify else None, id2label)


__all__ = ["load_swin", "save_swin_hf", "swin_rows", "to_hf_state"]
