"""Hugging Face DeiT: import of DeiTModel and DeiTForImageClassificationWithTeacher folders.

Hugging Face's DeiT is a ViT whose embeddings always carry the distillation token (tokens
[class, distillation, patches], position embeddings of 2 + L rows); it becomes our
ViT(dist_token=True) (see vit_jax/models/vit.py):
    DeiTModel                              num_classes=0; aux["encoded"] == last_hidden_state
                                           (HF's dense + tanh pooler, `pooler.*`, is ignored).
    DeiTForImageClassificationWithTeacher  num_classes=num_labels, cls_classifier -> head,
                                           distillation_classifier -> head_dist; out == logits
                                           (the average), aux["logits_cls"] == cls_logits,
                                           aux["logits_dist"] == distillation_logits.
DeiTForImageClassification (a class head only on a model that has the distillation token) has no
vit_jax counterpart and is refused by load_hf. Position embeddings are resized with torch's
bicubic kernel (posemb_interp="bicubic"), as HF's interpolate_pos_encoding does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn

from vit_jax.convert.hf_vit import _HF_DEFAULTS, _HF_RENAMES, _num_labels, _vit_fields_from_hf, vit_rows
from vit_jax.convert.tables import Row, import_rows
from vit_jax.convert.weights import (Params, StateDict, Variables, canonical_keys, dummy_images, finish,
                                     read_hf_weights)
from vit_jax.models.vit import ViT

WITH_TEACHER = "DeiTForImageClassificationWithTeacher"
_HEADS = (Row("head", "cls_classifier", "dense"), Row("head_dist", "distillation_classifier", "dense"))


def load_deit(folder: Path, cfg: Mapping[str, Any], arch: str, overrides: dict,
              check_posemb: bool) -> tuple[nn.Module, Variables]:
    """DeiTModel / DeiTForImageClassificationWithTeacher folder -> ViT(dist_token=True)."""
    del check_posemb   # learned position embeddings
    cfg = {**_HF_DEFAULTS, **cfg}
    sd = StateDict(canonical_keys(read_hf_weights(folder), folder, "deit.", _HF_RENAMES), str(folder))
    classify = arch == WITH_TEACHER
    module = ViT(num_classes=_num_labels(cfg) if classify else 0, dist_token=True,
                 posemb_interp="bicubic", **_vit_fields_from_hf(cfg))
    p = Params(sd)
    rows = vit_rows(module.depth) + (Row("dist_token", "embeddings.distillation_token"),)
    import_rows(rows + (_HEADS if classify else ()), p)
    sd.drop(r"pooler\.dense\.(weight|bias)")   # DeiTModel's pooler: no counterpart
    sd.drop(r"embeddings\.mask_token")          # masked-image-modeling only
    return finish(module, p, (dummy_images(module),), {}, arch, overrides)
