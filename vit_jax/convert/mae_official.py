"""Official facebookresearch/mae checkpoint files (`mae_pretrain_vit_*[_full].pth`,
`mae_visualize_vit_*.pth`, `mae_finetuned_vit_*.pth`) -> vit_jax MAE or ViT.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vit_jax import models
from vit_jax.convert.hf_vit import mae_decoder_rows
from vit_jax.convert.tables import Row, block_rows, import_rows, repeat, scoped
from vit_jax.convert.weights import (ConversionError, Params, PathLike, StateDict, Variables,
                                     check_fixed_posemb, dummy_images, finish,
                                     flatten_torch_state, mae_init_args, make_mae, pair,
                                     torch_load)
from vit_jax.models.vit import ViT

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
    obj = torch_load(path)
    for wrapper in ("model", "state_dict"):  # official files: {"model": state_dict}
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    tensors = flatten_torch_state(obj, path)
    if tensors and all(k.startswith("module.") for k in tensors):  # DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _named_vit(model_name: str, image_size: int) -> ViT:
    m = _OFFICIAL_NAME.match(model_name)
    if m:
        return models.vit(m.group(1), int(m.group(2)), image_size)
    module = models.create(model_name)
    if not isinstance(module, ViT):
        raise ConversionError(f"model_name {model_name!r} is not a ViT.")
    return module


# timm's Block (the official code builds on it): q / k / v fused into one Linear.
_MAE_BLOCK = block_rows(qkv="attn.qkv", out="attn.proj", norms=("norm1", "norm2"),
                        mlp=("mlp.fc1", "mlp.fc2"))


def official_rows(module: nn.Module) -> tuple[Row, ...]:
    """The key table of an official MAE file for the module load_mae_checkpoint builds: an MAE
    (encoder + decoder, fixed pos-embs left out) or a ViT (encoder-only / fine-tuned)."""
    if isinstance(module, ViT):
        encoder, ours = module, ""
    else:
        encoder, ours = module.encoder, "encoder/"
    rows = (Row("embedding", "patch_embed.proj", "conv"), Row("cls_token", "cls_token"),
            *((Row("pos_embed", "pos_embed"),) if encoder.posemb == "learn" else ()),
            *repeat(_MAE_BLOCK, encoder.depth, "blocks_{}/", "blocks.{}."))
    # fine-tuned (global pool): fc_norm instead of the final norm
    norm = "fc_norm" if encoder._use_fc_norm else "norm"
    rows += (Row(norm, norm, "norm"),)
    if encoder.num_classes > 0:
        rows += (Row("head", "head", "dense"),)
    rows = scoped(rows, ours=ours)
    if encoder is not module:
        rows += mae_decoder_rows(module.decoder_depth, _MAE_BLOCK, "decoder_blocks")
    return rows


def _need(sd: StateDict, key: str, path: Path) -> np.ndarray:
    if key not in sd:
        raise ConversionError(f"{path}: key {key!r} is missing, so the model size cannot be "
                              f"inferred; is this an official MAE checkpoint? Keys: "
                              f"{sorted(sd.tensors)[:20]}...")
    return sd.tensors[key]


def load_mae_checkpoint(path: PathLike, model_name: str | None = None, *,
                        check_posemb: bool = True, **overrides: Any) -> tuple[nn.Module, Variables]:
    """Load an official facebookresearch/mae checkpoint (read with torch.load(weights_only=True)).

    * Encoder + decoder keys (`mae_pretrain_vit_*_full.pth`, `mae_visualize_vit_*.pth`)
      -> vit_jax.models.mae.MAE whose encoder is a ViT(num_classes=0,
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
    sd = StateDict(_read_mae_file(path), str(path))
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
                    patch_size=pair(ref.patch_size)[0])
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
    p = Params(sd)

    if not pretrain:
        head = sd.tensors.get("head.weight")
        gap = "fc_norm.weight" in sd
        module = ViT(num_classes=0 if head is None else int(head.shape[0]),
                     pool="gap" if gap else "token", fc_norm=gap, posemb="learn", **vit_kw)
        import_rows(official_rows(module), p)
        return finish(module, p, (dummy_images(module),), {},
                      "ViT (MAE fine-tuned)", overrides)

    dw = _need(sd, "decoder_embed.weight", path)
    dec_width = int(dw.shape[0])
    dec_depth = sd.count(r"decoder_blocks\.(\d+)\.")
    dec_mlp = int(_need(sd, "decoder_blocks.0.mlp.fc1.weight", path).shape[0])
    dec_heads = overrides.pop("decoder_heads", None) or \
        _default_heads(dec_width, _MAE_DECODER_HEADS, "decoder_heads")
    encoder = ViT(num_classes=0, pool="token", fc_norm=False, posemb="sincos2d", **vit_kw)
    module = make_mae(encoder, decoder_width=dec_width, decoder_depth=dec_depth,
                      decoder_heads=int(dec_heads), decoder_mlp_dim=dec_mlp,
                      mask_ratio=float(overrides.pop("mask_ratio", 0.75)),
                      norm_pix_loss=bool(overrides.pop("norm_pix_loss", True)))
    import_rows(official_rows(module), p)
    # The fixed sin-cos tables are recomputed, not parameters: checked, then dropped.
    for key, dim, optional in (("pos_embed", width, False),
                               ("decoder_pos_embed", dec_width, True)):
        value = sd.take(key, optional=optional)
        if check_posemb:
            check_fixed_posemb(value, key, encoder.base_grid, dim)
    args, kwargs = mae_init_args(module)
    return finish(module, p, args, kwargs, "MAE (pre-training)", overrides)
