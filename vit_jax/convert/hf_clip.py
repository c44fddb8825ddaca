"""Hugging Face CLIP vision tower: import of CLIPVisionModel, CLIPVisionModelWithProjection and
(the image side of) CLIPModel folders.  What each architecture becomes: see vit_jax.convert.

CLIP's vision transformer is a ViT with a bias-free patch conv, a LayerNorm before the blocks
(`pre_layrnorm` -> norm_pre), no norm on the final tokens, and `post_layernorm` on the class
token only (-> fc_norm); the projection to the joint embedding space (`visual_projection`, no
bias) becomes the head.  Position embeddings are resized with torch's bicubic kernel, what
HF does with interpolate_pos_encoding=True.

config.json may be a CLIPVisionConfig (model_type "clip_vision_model", what transformers writes
for the two vision classes) or a full CLIPConfig whose `vision_config` is nested (model_type
"clip"); keys absent from it take HF's CLIPVisionConfig defaults.  Checkpoint keys are read
with or without the `vision_model.` prefix (transformers >= 5 saves CLIPVisionModel without it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn

from vit_jax.convert.hf_vit import _hf_act
from vit_jax.convert.tables import Row, block_rows, import_rows, repeat
from vit_jax.convert.weights import (ConversionError, Params, StateDict, Variables, canonical_keys,
                                     dummy_images, finish, pair, read_hf_weights)
from vit_jax.models.vit import ViT

# HF CLIPVisionConfig defaults (configuration_clip.py) for keys absent from config.json.
_HF_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
    num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0)

# HF CLIP's encoder layer: the shared block under CLIP's own names.
_CLIP_BLOCK = block_rows(qkv=[f"self_attn.{c}_proj" for c in "qkv"], out="self_attn.out_proj",
                         norms=("layer_norm1", "layer_norm2"), mlp=("mlp.fc1", "mlp.fc2"))


def clip_rows(module: ViT) -> tuple[Row, ...]:
    """The key table of HF's CLIP vision tower (no `vision_model.` prefix) for its ViT; the
    projection (`visual_projection`, outside that prefix) is the head when num_classes > 0.
    The class embedding (D,) and position table (1 + N, D) are stored unbatched."""
    head = (Row("head", "visual_projection", "dense"),) if module.num_classes > 0 else ()
    return (Row("embedding", "embeddings.patch_embedding", "conv"),
            Row("cls_token", "embeddings.class_embedding", "token"),
            Row("pos_embed", "embeddings.position_embedding.weight", "table"),
            Row("norm_pre", "pre_layrnorm", "norm"),
            *repeat(_CLIP_BLOCK, module.depth, "blocks_{}/", "encoder.layers.{}."),
            Row("fc_norm", "post_layernorm", "norm"), *head)


def _vision_config(cfg: Mapping[str, Any], arch: str, folder: Path) -> dict[str, Any]:
    """The vision settings (HF defaults filled in) of a CLIPVisionConfig or a full CLIPConfig."""
    if "vision_config" in cfg:  # full CLIPConfig: the vision tower's settings are nested
        vision = cfg["vision_config"]
        if not isinstance(vision, Mapping):
            raise ConversionError(f"{folder / 'config.json'}: vision_config is not a mapping "
                                  f"(got {type(vision).__name__}).")
        vision = dict(vision)
        if arch == "CLIPModel" and "projection_dim" in cfg:
            # CLIPModel sizes visual_projection with the top-level projection_dim.
            vision["projection_dim"] = cfg["projection_dim"]
        return {**_HF_DEFAULTS, **vision}
    if cfg.get("model_type") not in (None, "clip_vision_model"):
        raise ConversionError(
            f"{folder / 'config.json'}: architecture {arch} with model_type "
            f"{cfg.get('model_type')!r} and no vision_config; expected a CLIPVisionConfig "
            "(model_type 'clip_vision_model') or a CLIPConfig with a nested vision_config.")
    return {**_HF_DEFAULTS, **cfg}


def _clip_vit(cfg: Mapping[str, Any], num_classes: int) -> ViT:
    image, patch = pair(cfg["image_size"]), pair(cfg["patch_size"])
    # HF's grid is image // patch (floored): size the pos-emb grid the same way.
    image = (image[0] // patch[0] * patch[0], image[1] // patch[1] * patch[1])
    return ViT(num_classes=num_classes, width=int(cfg["hidden_size"]),
               depth=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
               mlp_dim=int(cfg["intermediate_size"]),
               image_size=image[0] if image[0] == image[1] else image,
               patch_size=patch[0] if patch[0] == patch[1] else patch,
               in_channels=int(cfg["num_channels"]), layer_norm_eps=float(cfg["layer_norm_eps"]),
               act=_hf_act(cfg), qkv_bias=True, fused_qkv=False, dropout=0.0,
               attn_dropout=float(cfg["attention_dropout"] or 0.0),
               class_token=True, pool="token", posemb="learn", posemb_interp="bicubic",
               pre_norm=True, final_norm=False, fc_norm=True, patch_bias=False, head_bias=False,
               norm_layer="layernorm", init_values=None)


def load_clip(folder: Path, cfg: Mapping[str, Any], arch: str, overrides: dict,
              check_posemb: bool) -> tuple[nn.Module, Variables]:
    """CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel folder -> ViT (see
    vit_jax.convert).  check_posemb is unused (CLIP's position embedding is learned)."""
    del check_posemb
    cfg = _vision_config(cfg, arch, folder)
    project = arch in ("CLIPVisionModelWithProjection", "CLIPModel")
    module = _clip_vit(cfg, int(cfg["projection_dim"]) if project else 0)
    sd = StateDict(canonical_keys(read_hf_weights(folder), folder, "vision_model.", ()),
                   str(folder))
    p = Params(sd)
    import_rows(clip_rows(module), p)
    # Older files keep the position_ids buffer; a CLIPModel folder also holds the text tower.
    sd.drop(r"embeddings\.position_ids")
    if arch == "CLIPModel":
        sd.drop(r"text_model\..*|text_projection\.weight|logit_scale")
    return finish(module, p, (dummy_images(module),), {}, arch, overrides)
