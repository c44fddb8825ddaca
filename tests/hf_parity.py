"""Shared pieces of the Hugging Face parity tests (transformers, torch CPU).

The tests build tiny, randomly initialised HF models, move every parameter away from its init
(`perturb`: LayerNorm 1/0 and zero biases would hide swapped or dropped tensors), feed both
sides the same pixels (`images`) and compare the outputs (`close`).  The ViTMAE fixtures used by
test_convert.py and test_convert_mae_official.py live here too, so that both use one definition:
a test module picks a fixture up under its module-level name (`mae_model = hf_parity.mae_model`)
and builds its own instance (module scope).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import torch

from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

ATOL = 1e-4
# A small non-default ViT(MAE) encoder and MAE decoder.
BASE = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
            patch_size=8, num_channels=3, layer_norm_eps=1e-12, hidden_act="gelu")
MAE_DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=2,
                   decoder_num_attention_heads=4, decoder_intermediate_size=80)


# ----------------------------------------------------------------------------- helpers

def mae_sincos(num_patches: int, dim: int) -> torch.Tensor:
    """HF ViTMAE's fixed 2-D sin-cos table, (1, 1 + num_patches, dim) with a zero cls row.

    HF's random init leaves the table at zero in this transformers version; a trained
    checkpoint holds this one, its halves rotated to HF's pretrained [w | h] layout.
    """
    side = int(round(num_patches ** 0.5))
    table = build_2d_sinusoidal_position_embedding(side, side, dim, cls_token=True)
    half = dim // 2
    return torch.cat([table[..., half:], table[..., :half]], dim=-1)[None]


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.1,
            scales: dict[str, float] | None = None) -> torch.nn.Module:
    """Adds `scale` * N(0, 1) noise (a torch Generator seeded by `seed`, drawn in parameter
    order) to every parameter; returns `model.eval()`.

    scales: a different scale for the parameters whose names end with a key (e.g. DINOv2's
        layer scales, {"lambda1": 0.3}).
    The fixed MAE position embeddings (names ending in decoder_pos_embed, and the encoder's
    position_embeddings of a ViTMAEModel / ViTMAEForPreTraining) are set to `mae_sincos`
    instead, and draw no noise.
    """
    g = torch.Generator().manual_seed(seed)
    mae = isinstance(model, (ViTMAEModel, ViTMAEForPreTraining))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("decoder_pos_embed") or (mae and name.endswith("position_embeddings")):
                p.copy_(mae_sincos(p.shape[1] - 1, p.shape[2]))
                continue
            s = next((v for k, v in (scales or {}).items() if name.endswith(k)), scale)
            p.add_(s * torch.randn(p.shape, generator=g))
    return model.eval()


def images(seed: int, size: int | tuple[int, int],
           batch: int = 2) -> tuple[np.ndarray, torch.Tensor]:
    """(NHWC numpy for vit_jax, NCHW torch for HF) of the same N(0, 1) pixels.

    size: the side of a square image, or (height, width).
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = np.random.default_rng(seed).normal(size=(batch, *hw, 3)).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def close(ours: Any, theirs: Any, atol: float = ATOL) -> float:
    """Asserts equal shapes and max |ours - theirs| < atol (float32); returns that max."""
    a = np.asarray(ours, np.float32)
    b = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs, np.float32)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float(np.abs(a - b).max())
    print(f"max |diff| {diff:.3g}")
    assert diff < atol, diff
    return diff


def save(model: torch.nn.Module, folder: Path, safe: bool = True) -> Path:
    """model.save_pretrained(folder); safe=False leaves a legacy pytorch_model.bin instead."""
    model.save_pretrained(folder)
    if not safe:  # transformers 5 always writes safetensors: make the legacy .bin folder by hand
        from safetensors.torch import load_file
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


def copy_with_config(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of the HF folder `src` at `dst` whose config.json has `changes` applied."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ----------------------------------------------------------------------------- MAE fixtures

@pytest.fixture(scope="module")
def mae_model(tmp_path_factory) -> dict:
    """ViTMAEModel with mask_ratio 0 (every patch visible, shuffled by the noise)."""
    torch.manual_seed(2)
    model = perturb(ViTMAEModel(ViTMAEConfig(image_size=32, qkv_bias=True, mask_ratio=0.0,
                                             **BASE, **MAE_DECODER)), 3)
    x, xt = images(2, 32)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(xt, noise=noise)
        sorted_out = model(xt, noise=torch.arange(16.0).expand(2, 16))
    return dict(model=model, x=x, out=out, sorted_hidden=sorted_out.last_hidden_state,
                folder=save(model, tmp_path_factory.mktemp("mae_model")))


@pytest.fixture(scope="module", params=[False, True], ids=["pix", "normpix"])
def mae_pretrain(request, tmp_path_factory) -> dict:
    """ViTMAEForPreTraining, 40px (25 patches), non-default decoder, norm_pix_loss off / on."""
    norm_pix = request.param
    torch.manual_seed(3)
    cfg = ViTMAEConfig(image_size=40, qkv_bias=not norm_pix, mask_ratio=0.6,
                       norm_pix_loss=norm_pix, **{**BASE, "layer_norm_eps": 1e-6}, **MAE_DECODER)
    model = perturb(ViTMAEForPreTraining(cfg), 4 + norm_pix)
    x, xt = images(3, 40)
    noise = torch.rand(2, 25, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(xt, noise=noise)
    return dict(model=model, x=x, noise=noise, out=out, norm_pix=norm_pix,
                folder=save(model, tmp_path_factory.mktemp("mae_pre")))
