"""vit_jax.convert.load_mae_checkpoint: facebookresearch/mae checkpoints (.pth, torch CPU).

The pretraining and encoder-only checkpoints are written from randomly initialised, perturbed
Hugging Face ViTMAE models (the fixtures shared with test_convert.py) under the official key
names, so both conversions must give HF's outputs to 1e-4; the fine-tuned layout is checked
tensor by tensor on random values.
"""
from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch

from tests import hf_parity
from tests.hf_parity import close
from vit_jax import convert
from vit_jax.convert import ConversionError
from vit_jax.models.vit import ViT

# Module-scoped HF ViTMAE fixtures (pytest finds a fixture under its module-level name).
mae_model = hf_parity.mae_model
mae_pretrain = hf_parity.mae_pretrain


# ----------------------------------------------------------------------------- from HF models

def _official_from_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """facebookresearch/mae key names for an HF ViTMAE(Model|ForPreTraining) (q, k, v fused)."""
    sd = {k.removeprefix("vit."): v.clone() for k, v in model.state_dict().items()}
    out = {"patch_embed.proj.weight": sd.pop("embeddings.patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": sd.pop("embeddings.patch_embeddings.projection.bias"),
           "cls_token": sd.pop("embeddings.cls_token"),
           "pos_embed": sd.pop("embeddings.position_embeddings"),
           "norm.weight": sd.pop("layernorm.weight"), "norm.bias": sd.pop("layernorm.bias")}
    for k in [k for k in sd if k.startswith("decoder.") and "decoder_layers" not in k]:
        out[k[len("decoder."):]] = sd.pop(k)
    names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.o_proj": "attn.proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for src, dst in (("layers", "blocks"), ("decoder.decoder_layers", "decoder_blocks")):
        found = [int(m.group(1)) for k in sd if (m := re.match(re.escape(src) + r"\.(\d+)\.", k))]
        n = 1 + max(found, default=-1)
        for i in range(n):
            for a, b in names.items():
                for t in ("weight", "bias"):
                    out[f"{dst}.{i}.{b}.{t}"] = sd.pop(f"{src}.{i}.{a}.{t}")
            for t in ("weight", "bias"):
                parts = [sd.pop(f"{src}.{i}.attention.{q}_proj.{t}", None) for q in "qkv"]
                if parts[0] is not None:
                    out[f"{dst}.{i}.attn.qkv.{t}"] = torch.cat(parts)
    assert not sd, sorted(sd)
    return out


def test_official_mae_pretrain_matches_hf(mae_pretrain, tmp_path):
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": _official_from_hf(mae_pretrain["model"])}, path)
    module, variables = convert.load_mae_checkpoint(
        path, num_heads=4, decoder_heads=4, mask_ratio=0.6, norm_pix_loss=mae_pretrain["norm_pix"])
    assert (module.encoder.width, module.encoder.depth, module.encoder.mlp_dim,
            module.encoder.image_size, module.encoder.qkv_bias) == \
        (48, 3, 96, 40, not mae_pretrain["norm_pix"])
    assert (module.decoder_width, module.decoder_depth, module.decoder_mlp_dim) == (32, 2, 80)
    out = module.apply(variables, jnp.asarray(mae_pretrain["x"]),
                       noise=jnp.asarray(mae_pretrain["noise"].numpy()))
    close(out["pred"], mae_pretrain["out"].logits)
    close(out["loss"], mae_pretrain["out"].loss)


def test_official_mae_encoder_only_matches_hf(mae_model, tmp_path):
    """The released mae_pretrain_vit_*.pth hold the encoder only: a ViT backbone."""
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": _official_from_hf(mae_model["model"])}, path)
    # HF's eps (1e-12) differs from the official 1e-6: override it for exact parity.
    module, variables = convert.load_mae_checkpoint(path, num_heads=4, layer_norm_eps=1e-12)
    assert isinstance(module, ViT) and module.num_classes == 0 and module.posemb == "learn"
    _, aux = module.apply(variables, jnp.asarray(mae_model["x"]))
    close(aux["encoded"], mae_model["sorted_hidden"])


# ----------------------------------------------------------------------------- fine-tuned layout

def _finetuned_state(depth: int = 2, d: int = 32, mlp: int = 64, p: int = 4, side: int = 4,
                     classes: int = 5) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of `mae_finetuned_vit_*.pth`."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"patch_embed.proj.weight": r(d, 3, p, p), "patch_embed.proj.bias": r(d),
          "cls_token": r(1, 1, d), "pos_embed": r(1, 1 + side * side, d),
          "fc_norm.weight": r(d), "fc_norm.bias": r(d), "head.weight": r(classes, d),
          "head.bias": r(classes)}
    for i in range(depth):
        sd.update({f"blocks.{i}.norm1.weight": r(d), f"blocks.{i}.norm1.bias": r(d),
                   f"blocks.{i}.attn.qkv.weight": r(3 * d, d), f"blocks.{i}.attn.qkv.bias": r(3 * d),
                   f"blocks.{i}.attn.proj.weight": r(d, d), f"blocks.{i}.attn.proj.bias": r(d),
                   f"blocks.{i}.norm2.weight": r(d), f"blocks.{i}.norm2.bias": r(d),
                   f"blocks.{i}.mlp.fc1.weight": r(mlp, d), f"blocks.{i}.mlp.fc1.bias": r(mlp),
                   f"blocks.{i}.mlp.fc2.weight": r(d, mlp), f"blocks.{i}.mlp.fc2.bias": r(d)})
    return sd


def test_official_mae_finetuned_mapping(tmp_path):
    sd = _finetuned_state()
    path = tmp_path / "mae_finetuned_vit_tiny.pth"
    torch.save({"model": sd}, path)
    module, variables = convert.load_mae_checkpoint(path, num_heads=2, drop_path_rate=0.1)
    assert (module.width, module.depth, module.mlp_dim, module.patch_size, module.image_size,
            module.num_classes, module.pool, module.posemb, module.layer_norm_eps,
            module.drop_path_rate) == (32, 2, 64, 4, 16, 5, "gap", "learn", 1e-6, 0.1)
    prm = jax.tree.map(np.asarray, variables["params"])
    assert "norm" not in prm and "fc_norm" in prm
    qkv = sd["blocks.1.attn.qkv.weight"].numpy()
    np.testing.assert_array_equal(prm["blocks_1"]["attn"]["query"]["kernel"], qkv[:32].T)
    np.testing.assert_array_equal(prm["blocks_1"]["attn"]["key"]["kernel"], qkv[32:64].T)
    np.testing.assert_array_equal(prm["blocks_1"]["attn"]["value"]["kernel"], qkv[64:].T)
    np.testing.assert_array_equal(prm["blocks_1"]["attn"]["value"]["bias"],
                                  sd["blocks.1.attn.qkv.bias"].numpy()[64:])
    np.testing.assert_array_equal(prm["embedding"]["kernel"],
                                  sd["patch_embed.proj.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(prm["head"]["kernel"], sd["head.weight"].numpy().T)
    np.testing.assert_array_equal(prm["pos_embed"], sd["pos_embed"].numpy())
    out, _ = module.apply(variables, jnp.ones((1, 16, 16, 3)))
    assert out.shape == (1, 5) and np.isfinite(np.asarray(out)).all()
    # A plain state dict (no {"model": ...} wrapper) and a DDP "module." prefix also load.
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "plain.pth")
    module2, variables2 = convert.load_mae_checkpoint(tmp_path / "plain.pth", num_heads=2)
    close(module2.apply(variables2, jnp.ones((1, 16, 16, 3)))[0], np.asarray(out))


def test_official_mae_errors(tmp_path):
    sd = _finetuned_state()
    path = tmp_path / "ft.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ConversionError, match="num_heads=N"):  # width 32: heads not inferable
        convert.load_mae_checkpoint(path)
    with pytest.raises(ConversionError, match="does not hold a vit_base_patch16"):
        convert.load_mae_checkpoint(path, "vit_base_patch16")
    bad = dict(sd)
    bad["extra.weight"] = torch.zeros(2)
    del bad["blocks.1.norm2.bias"]
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as e:
        convert.load_mae_checkpoint(tmp_path / "bad.pth", num_heads=2)
    assert "missing key(s): ['blocks.1.norm2.bias']" in str(e.value)
    assert "unused key(s): ['extra.weight']" in str(e.value)
    bad = dict(sd)
    bad["blocks.0.mlp.fc2.weight"] = torch.zeros(32, 48)
    torch.save({"model": bad}, tmp_path / "shape.pth")
    with pytest.raises(ConversionError, match=r"'blocks.0.mlp.fc2.weight': checkpoint \(32, 48\)"
                                              r".*mlp/fc2/kernel is \(64, 32\)"):
        convert.load_mae_checkpoint(tmp_path / "shape.pth", num_heads=2)
    # Training checkpoints pickle an argparse Namespace: weights_only refuses, with a hint.
    torch.save({"model": sd, "args": argparse.Namespace(lr=1.0)}, tmp_path / "train.pth")
    with pytest.raises(ConversionError, match="weights_only"):
        convert.load_mae_checkpoint(tmp_path / "train.pth", num_heads=2)
    with pytest.raises(FileNotFoundError):
        convert.load_mae_checkpoint(tmp_path / "none.pth")


def test_official_model_name_gives_heads(tmp_path):
    """ViT-B-like widths infer heads from the name (64-wide heads otherwise)."""
    sd = _finetuned_state(depth=1, d=128, mlp=512, p=4, side=2, classes=3)
    torch.save({"model": sd}, tmp_path / "ft.pth")
    module, _ = convert.load_mae_checkpoint(tmp_path / "ft.pth")
    assert module.num_heads == 2
