"""convert.load_hf for CLIP (vision tower) and DINOv2 against randomly initialised Hugging Face
models (transformers, torch CPU).

Every HF model is tiny, uses a non-default config and is built once per module; all its
parameters are perturbed away from their init (and DINOv2's layer scales randomised, so they
matter).  Outputs must agree to 1e-4 in float32 eval mode, at the stored resolution and at
other (also non-square) ones, where both sides resize the position embeddings bicubically.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import torch

from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig,
                          CLIPVisionModel, CLIPVisionModelWithProjection, Dinov2Config,
                          Dinov2Model)

from tests.hf_parity import close, copy_with_config, images, perturb, save
from vit_jax import convert
from vit_jax.convert import ConversionError
from vit_jax.convert.hf_dinov2 import dinov2_canonical, dinov2_params, dinov2_vit
from vit_jax.convert.weights import StateDict, dummy_images, finish, read_hf_weights
from vit_jax.models.vit import ViT

CLIP_BASE = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                 num_channels=3, image_size=28, patch_size=7, layer_norm_eps=1e-4)
# (height, width) in pixels: the stored 4x4 grid, a larger one, a non-square mixed one.
CLIP_SIZES = [(28, 28), (42, 42), (21, 49)]
DINO_BASE = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2,
                 image_size=42, patch_size=7, layer_norm_eps=1e-5, layerscale_value=0.5)
DINO_SIZES = [(42, 42), (56, 56), (35, 63)]


# ----------------------------------------------------------------------------- helpers

def _run_hf(model: torch.nn.Module, sizes: list[tuple[int, int]], **kwargs: Any) -> dict:
    """HF outputs for each image size: {size: (NHWC images, model output)}."""
    out = {}
    with torch.no_grad():
        for i, size in enumerate(sizes):
            x, xt = images(i, size)
            out[size] = (x, model(xt, **kwargs))
    return out


# ----------------------------------------------------------------------------- HF fixtures

@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory) -> dict:
    """CLIPVisionModel, 28px / patch 7, quick_gelu (HF's default), eps 1e-4."""
    torch.manual_seed(0)
    model = perturb(CLIPVisionModel(CLIPVisionConfig(projection_dim=24, **CLIP_BASE)), 1)
    folder = save(model, tmp_path_factory.mktemp("clip_vision"))
    return dict(model=model, folder=folder,
                outs=_run_hf(model, CLIP_SIZES, interpolate_pos_encoding=True))


@pytest.fixture(scope="module")
def clip_proj(tmp_path_factory) -> dict:
    """CLIPVisionModelWithProjection, projection_dim 24, exact gelu."""
    torch.manual_seed(1)
    cfg = CLIPVisionConfig(projection_dim=24, **{**CLIP_BASE, "hidden_act": "gelu"})
    model = perturb(CLIPVisionModelWithProjection(cfg), 2)
    folder = save(model, tmp_path_factory.mktemp("clip_proj"))
    return dict(model=model, folder=folder,
                outs=_run_hf(model, CLIP_SIZES, interpolate_pos_encoding=True))


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory) -> dict:
    """Dinov2Model, 42px / patch 7, mlp_ratio 2, eps 1e-5, layer scales around 0.5."""
    torch.manual_seed(2)
    # the layer scales (lambda1, around layerscale_value) get more noise: they must matter
    model = perturb(Dinov2Model(Dinov2Config(**DINO_BASE)), 3, scales={"lambda1": 0.3})
    folder = save(model, tmp_path_factory.mktemp("dinov2"))
    return dict(model=model, folder=folder, outs=_run_hf(model, DINO_SIZES))


# ----------------------------------------------------------------------------- CLIP

@pytest.mark.parametrize("size", CLIP_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_clip_vision_model(clip_vision, size):
    module, variables = convert.load_hf(clip_vision["folder"])
    assert isinstance(module, ViT)
    assert (module.num_classes, module.width, module.depth, module.num_heads, module.mlp_dim,
            module.image_size, module.patch_size, module.layer_norm_eps, module.act) == \
        (0, 48, 2, 4, 96, 28, 7, 1e-4, "quick_gelu")
    assert module.pre_norm and module.fc_norm and module.final_norm is False
    prm = variables["params"]
    assert "bias" not in prm["embedding"] and "norm" not in prm
    assert prm["cls_token"].shape == (1, 1, 48) and prm["pos_embed"].shape == (1, 17, 48)
    x, hf = clip_vision["outs"][size]
    out, aux = module.apply(variables, jnp.asarray(x))
    close(aux["encoded"], hf.last_hidden_state)
    close(out, hf.pooler_output)


@pytest.mark.parametrize("size", CLIP_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_clip_vision_model_with_projection(clip_proj, size):
    module, variables = convert.load_hf(clip_proj["folder"])
    assert module.num_classes == 24 and not module.head_bias and module.act == "gelu"
    assert set(variables["params"]["head"]) == {"kernel"}
    x, hf = clip_proj["outs"][size]
    out, aux = module.apply(variables, jnp.asarray(x))
    close(aux["encoded"], hf.last_hidden_state)
    close(out, hf.image_embeds)


def test_clip_transformers4_layout(clip_vision, tmp_path):
    """transformers 4 files: every key under `vision_model.`, plus the position_ids buffer."""
    from safetensors.numpy import load_file, save_file
    folder = copy_with_config(clip_vision["folder"], tmp_path / "m")
    tensors = {f"vision_model.{k}": v
               for k, v in load_file(str(folder / "model.safetensors")).items()}
    tensors["vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    module, variables = convert.load_hf(folder)
    x, hf = clip_vision["outs"][(28, 28)]
    close(module.apply(variables, jnp.asarray(x))[0], hf.pooler_output)


def test_clip_model_folder_gives_image_features(tmp_path):
    """A full CLIPModel folder (nested vision_config): the image tower + visual_projection."""
    torch.manual_seed(3)
    cfg = CLIPConfig(text_config=CLIPTextConfig(hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                vocab_size=50, max_position_embeddings=16,
                                                bos_token_id=0, eos_token_id=2,
                                                pad_token_id=1).to_dict(),
                     vision_config=CLIPVisionConfig(**CLIP_BASE).to_dict(), projection_dim=20)
    model = perturb(CLIPModel(cfg), 4)
    model.save_pretrained(tmp_path)
    x, xt = images(5, (42, 42))
    with torch.no_grad():
        feats = model.get_image_features(xt, interpolate_pos_encoding=True).pooler_output
    module, variables = convert.load_hf(tmp_path)
    assert module.num_classes == 20 and module.width == 48 and module.layer_norm_eps == 1e-4
    close(module.apply(variables, jnp.asarray(x))[0], feats)


def test_clip_like_vit_cannot_be_saved_as_hf_vit(clip_proj, tmp_path):
    module, variables = convert.load_hf(clip_proj["folder"])
    with pytest.raises(ConversionError) as e:
        convert.save_hf(module, variables, tmp_path)
    for word in ("pre_norm=True", "fc_norm=True", "final_norm=False", "head_bias=False"):
        assert word in str(e.value)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("fields,word", [
    (dict(final_norm=False), "final_norm=False"),
    (dict(head_bias=False), "head_bias=False"),
    (dict(pre_norm=True), "pre_norm=True"),
    (dict(init_values=0.5), "layer scale"),
])
def test_save_hf_refuses_clip_and_dinov2_settings(fields, word, tmp_path):
    module = ViT(num_classes=3, patch_size=8, width=32, depth=1, num_heads=2, image_size=16,
                 **fields)
    with pytest.raises(ConversionError, match=word):
        convert.save_hf(module, {"params": {}}, tmp_path)


# ----------------------------------------------------------------------------- DINOv2

@pytest.mark.parametrize("size", DINO_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dinov2_model(dinov2, size):
    module, variables = convert.load_hf(dinov2["folder"])
    assert isinstance(module, ViT)
    assert (module.num_classes, module.width, module.depth, module.num_heads, module.mlp_dim,
            module.image_size, module.patch_size, module.layer_norm_eps, module.init_values,
            module.act, module.posemb_interp) == \
        (0, 48, 3, 4, 96, 42, 7, 1e-5, 0.5, "gelu", "bicubic")
    gamma = np.asarray(variables["params"]["blocks_2"]["ls2"]["gamma"])
    np.testing.assert_array_equal(
        gamma, dinov2["model"].encoder.layer[2].layer_scale2.lambda1.detach().numpy())
    x, hf = dinov2["outs"][size]
    out, aux = module.apply(variables, jnp.asarray(x))
    close(aux["encoded"], hf.last_hidden_state)
    close(out, hf.pooler_output)


def test_dinov2_raw_state_dict_and_scan(dinov2, tmp_path):
    """torch.save(model.state_dict()) uses transformers 5's module names (attention.q_proj)."""
    shutil.copy(Path(dinov2["folder"]) / "config.json", tmp_path / "config.json")
    state = dinov2["model"].state_dict()
    assert "encoder.layer.0.attention.q_proj.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    module, variables = convert.load_hf(tmp_path, scan=True)
    assert module.scan and "blocks" in variables["params"]
    x, hf = dinov2["outs"][(56, 56)]
    _, aux = module.apply(variables, jnp.asarray(x))
    close(aux["encoded"], hf.last_hidden_state)


def test_dinov2_reusable_mapping_with_prefix(dinov2):
    """dinov2_canonical / dinov2_params / dinov2_vit on keys under another prefix."""
    tensors = {f"backbone.{k}": v for k, v in read_hf_weights(Path(dinov2["folder"])).items()}
    sd = StateDict(dinov2_canonical(tensors, "teacher", prefix="backbone."), "teacher")
    module = dinov2_vit(width=48, depth=3, num_heads=4, mlp_dim=96, image_size=42, patch_size=7,
                        layer_norm_eps=1e-5, init_values=0.5)
    module, variables = finish(module, dinov2_params(sd, module.depth),
                               (dummy_images(module),), {}, "teacher", {})
    x, hf = dinov2["outs"][(42, 42)]
    close(module.apply(variables, jnp.asarray(x))[0], hf.pooler_output)


def test_dinov2_swiglu_refused(dinov2, tmp_path):
    folder = copy_with_config(dinov2["folder"], tmp_path / "m", use_swiglu_ffn=True)
    with pytest.raises(ConversionError, match="SwiGLU"):
        convert.load_hf(folder)


def test_dinov2_missing_layer_scale_is_reported(dinov2, tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = copy_with_config(dinov2["folder"], tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.layer.1.layer_scale1.lambda1"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"missing key\(s\): \['encoder.layer.1.layer_scale1"):
        convert.load_hf(folder)
