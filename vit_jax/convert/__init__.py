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
        `mae_visualize_vit_*.pth`) -> vit_jax.models.mae.MAE; encoder only (the
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
    ViTMAEForPreTraining       vit_jax.models.mae.MAE; apply(v, images, noise=noise)
                               gives loss / pred / mask equal to HF's loss / logits / mask.
    CLIPVisionModel            ViT(num_classes=0, pool="token", pre_norm=True,
                               final_norm=False, fc_norm=True, patch_bias=False,
                               posemb_interp="bicubic"): aux["encoded"] == last_hidden_state
                               (no norm on the tokens), out == pooler_output
                               (post_layernorm of the cls token, our fc_norm).
    CLIPVisionModelWithProjection  the same with num_classes=projection_dim, head_bias=False
                               (visual_projection): out == image_embeds.
    CLIPModel                  its vision tower as CLIPVisionModelWithProjection: out ==
                               get_image_features(...).pooler_output; the text tower,
                               text_projection and logit_scale are ignored.
    Dinov2Model                ViT(num_classes=0, pool="token", init_values=layerscale_value,
                               patch 14, posemb_interp="bicubic"): aux["encoded"] ==
                               last_hidden_state, out == pooler_output (normed cls token).
                               use_swiglu_ffn (ViT-g/14) is refused; the mask token dropped.
    DeiTModel                  ViT(num_classes=0, dist_token=True, posemb_interp="bicubic"):
                               aux["encoded"] == last_hidden_state ([class, distillation, patches]).
    DeiTForImageClassificationWithTeacher  the same with num_classes=num_labels: out == logits
                               (the heads' average), aux["logits_cls"] / aux["logits_dist"] ==
                               cls_logits / distillation_logits.
CLIP and DINOv2 resize their position embeddings with torch's bicubic kernel when the patch
grid differs from the stored one (HF: DINOv2 always, CLIP with interpolate_pos_encoding=True);
vit_jax does the same for those modules, so other resolutions agree as well.
The fixed sin-cos position embeddings of ViTMAE are not parameters here: they are checked
against vit_jax's `sincos_2d` (1e-4) and dropped (check_posemb=False skips the check).

Layouts: torch Linear weight (out, in) -> flax Dense kernel (in, out); Conv2d weight
(out, in, kh, kw) -> flax Conv kernel (kh, kw, in, out); images are NCHW in torch and
NHWC here.  All parameters are loaded as float32.

Errors: a missing folder / config / weights file raises FileNotFoundError; everything
else (unknown architecture, missing or unused checkpoint keys, shape mismatches,
settings the other side cannot express) raises ConversionError (a ValueError) naming
the keys and shapes involved.

Package layout (one file a source format; a new Hugging Face family is a new file plus its
lines in `_HF_LOADERS` below):
    weights.py        reading weight files; key bookkeeping, overrides and checks shared by all
    tables.py         declarative key tables (Row: our path, checkpoint key, kind) and the two
                      functions that apply one forwards (import) and backwards (export); each
                      family file below states its table once and uses it both ways
    hf_vit.py         Hugging Face ViT / ViTMAE import and ViT export
    hf_swin.py        Hugging Face Swin import and export
    hf_cvt.py         Hugging Face CvT import and export (BatchNorm running statistics included)
    hf_clip.py        Hugging Face CLIP vision tower import
    hf_dinov2.py      Hugging Face DINOv2 import (its key mapping is reusable: dinov2_params)
    hf_deit.py        Hugging Face DeiT import (the distillation token and its head)
    mae_official.py   facebookresearch/mae checkpoint files
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import flax.linen as nn

from vit_jax.convert import hf_clip
from vit_jax.convert import hf_cvt
from vit_jax.convert import hf_deit
from vit_jax.convert import hf_dinov2
from vit_jax.convert import hf_swin
from vit_jax.convert import hf_vit
from vit_jax.convert.mae_official import load_mae_checkpoint
from vit_jax.convert.weights import ConversionError, MissingFileError, PathLike, Variables, read_json

# config.json "architectures" entry -> loader(folder, cfg, arch, overrides, check_posemb).
_HF_LOADERS: dict[str, Callable[..., tuple[nn.Module, Variables]]] = {
    "ViTModel": hf_vit.load_vit,
    "ViTForImageClassification": hf_vit.load_vit,
    "ViTMAEModel": hf_vit.load_vit,
    "ViTMAEForPreTraining": hf_vit.load_vit_mae_pretraining,
    "SwinModel": hf_swin.load_swin,
    "SwinForImageClassification": hf_swin.load_swin,
    "CvtModel": hf_cvt.load_cvt,
    "CvtForImageClassification": hf_cvt.load_cvt,
    "CLIPVisionModel": hf_clip.load_clip,
    "CLIPVisionModelWithProjection": hf_clip.load_clip,
    "CLIPModel": hf_clip.load_clip,
    "Dinov2Model": hf_dinov2.load_dinov2,
    "DeiTModel": hf_deit.load_deit,
    hf_deit.WITH_TEACHER: hf_deit.load_deit,
}

SUPPORTED_HF_ARCHITECTURES = tuple(_HF_LOADERS)

# vit_jax module class -> exporter(module, variables, folder, id2label).
_HF_SAVERS: dict[type, Callable[..., Path]] = {
    hf_vit.ViT: hf_vit.save_vit_hf,
    hf_swin.Swin: hf_swin.save_swin_hf,
    hf_cvt.CvT: hf_cvt.save_cvt_hf,
}


def save_hf(module: nn.Module, variables: Mapping[str, Any], folder: PathLike,
            id2label: Mapping[int, str] | None = None) -> Path:
    """Write a vit_jax ViT, Swin or CvT as a Hugging Face folder (config.json + model.safetensors)
    that transformers' *Model (num_classes == 0) or *ForImageClassification loads to the same
    outputs. Raises ConversionError for settings the Hugging Face class cannot express."""
    saver = _HF_SAVERS.get(type(module))
    if saver is None:
        raise ConversionError(f"save_hf writes {[c.__name__ for c in _HF_SAVERS]} models; "
                              f"got {type(module).__name__}.")
    return saver(module, variables, folder, id2label)


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
        raise MissingFileError(f"Hugging Face model folder {folder} does not exist.")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise MissingFileError(f"{folder} has no config.json (found {sorted(os.listdir(folder))}); "
                               "a Hugging Face model folder needs one (save_pretrained writes it).")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ConversionError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not a model config "
                              "object; re-download it or write the folder again (save_pretrained).")
    arch = _hf_architecture(cfg, folder)
    return _HF_LOADERS[arch](folder, cfg, arch, overrides, check_posemb)


__all__ = ["SUPPORTED_HF_ARCHITECTURES", "ConversionError", "load_hf", "save_hf",
           "load_mae_checkpoint"]
