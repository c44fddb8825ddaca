"""vit_jax.convert against randomly initialised Hugging Face models (transformers, torch CPU).

Every HF model is tiny, uses a non-default config and is built once per module; all its
parameters are perturbed away from their init (LayerNorm 1/0, zero biases would hide
swapped or dropped tensors).  Outputs must agree to 1e-4 in float32 eval mode.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch
import transformers

from transformers import (ViTConfig, ViTForImageClassification, ViTMAEConfig,  # noqa: E402
                          ViTMAEForPreTraining, ViTMAEModel, ViTModel)
from transformers.models.vit_mae.modeling_vit_mae import \
    build_2d_sinusoidal_position_embedding  # noqa: E402

from vit_jax import convert  # noqa: E402
from vit_jax.convert import ConversionError  # noqa: E402
from vit_jax.models.vit import ViT  # noqa: E402

ATOL = 1e-4
BASE = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
            patch_size=8, num_channels=3, layer_norm_eps=1e-12, hidden_act="gelu")
MAE_DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=2,
                   decoder_num_attention_heads=4, decoder_intermediate_size=80)


# ----------------------------------------------------------------------------- helpers

def _mae_sincos(num_patches: int, dim: int) -> torch.Tensor:
    """HF's own fixed MAE table (its init leaves it at zero in this transformers version)."""
    side = int(num_patches ** 0.5)
    pe = build_2d_sinusoidal_position_embedding(side, side, dim, cls_token=True)
    half = dim // 2  # HF rotates the halves to the pretrained [w | h] layout
    return torch.cat([pe[..., half:], pe[..., :half]], dim=-1)[None]


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere; the fixed MAE pos-embs get the real sin-cos table."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("decoder_pos_embed") or (
                    isinstance(model, (ViTMAEModel, ViTMAEForPreTraining))
                    and name.endswith("position_embeddings")):
                p.copy_(_mae_sincos(p.shape[1] - 1, p.shape[2]))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _images(seed: int, size: int, batch: int = 2) -> tuple[np.ndarray, torch.Tensor]:
    """(NHWC numpy for vit_jax, NCHW torch for HF) of the same pixels."""
    x = np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _close(ours: Any, theirs: Any, atol: float = ATOL) -> None:
    a = np.asarray(ours, np.float32)
    b = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs, np.float32)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() < atol, np.abs(a - b).max()


def _save(model: torch.nn.Module, folder: Path, safe: bool = True) -> Path:
    model.save_pretrained(folder)
    if not safe:  # transformers 5 always writes safetensors: make the legacy .bin folder by hand
        from safetensors.torch import load_file
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


# ----------------------------------------------------------------------------- HF fixtures

@pytest.fixture(scope="module")
def vit_cls(tmp_path_factory) -> dict:
    """ViTForImageClassification, 32px, 7 labels, safetensors."""
    torch.manual_seed(0)
    model = _perturb(ViTForImageClassification(
        ViTConfig(image_size=32, qkv_bias=True, num_labels=7, **BASE)), 1)
    x, xt = _images(0, 32)
    with torch.no_grad():
        logits = model(xt).logits
    return dict(model=model, x=x, logits=logits,
                folder=_save(model, tmp_path_factory.mktemp("vit_cls")))


@pytest.fixture(scope="module")
def vit_model_bin(tmp_path_factory) -> dict:
    """ViTModel (with pooler), 40px, qkv_bias False, pytorch_model.bin."""
    torch.manual_seed(1)
    model = _perturb(ViTModel(ViTConfig(image_size=40, qkv_bias=False, **BASE)), 2)
    x, xt = _images(1, 40)
    with torch.no_grad():
        hidden = model(xt).last_hidden_state
    return dict(model=model, x=x, hidden=hidden,
                folder=_save(model, tmp_path_factory.mktemp("vit_bin"), safe=False))


@pytest.fixture(scope="module")
def mae_model(tmp_path_factory) -> dict:
    """ViTMAEModel with mask_ratio 0 (every patch visible, shuffled by the noise)."""
    torch.manual_seed(2)
    model = _perturb(ViTMAEModel(ViTMAEConfig(image_size=32, qkv_bias=True, mask_ratio=0.0,
                                              **BASE, **MAE_DECODER)), 3)
    x, xt = _images(2, 32)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(xt, noise=noise)
        sorted_out = model(xt, noise=torch.arange(16.0).expand(2, 16))
    return dict(model=model, x=x, out=out, sorted_hidden=sorted_out.last_hidden_state,
                folder=_save(model, tmp_path_factory.mktemp("mae_model")))


@pytest.fixture(scope="module", params=[False, True], ids=["pix", "normpix"])
def mae_pretrain(request, tmp_path_factory) -> dict:
    """ViTMAEForPreTraining, 40px (25 patches), non-default decoder, norm_pix_loss off / on."""
    norm_pix = request.param
    torch.manual_seed(3)
    cfg = ViTMAEConfig(image_size=40, qkv_bias=not norm_pix, mask_ratio=0.6,
                       norm_pix_loss=norm_pix, **{**BASE, "layer_norm_eps": 1e-6}, **MAE_DECODER)
    model = _perturb(ViTMAEForPreTraining(cfg), 4 + norm_pix)
    x, xt = _images(3, 40)
    noise = torch.rand(2, 25, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(xt, noise=noise)
    return dict(model=model, x=x, noise=noise, out=out, norm_pix=norm_pix,
                folder=_save(model, tmp_path_factory.mktemp("mae_pre")))


# ----------------------------------------------------------------------------- load_hf parity

def test_vit_for_image_classification(vit_cls):
    module, variables = convert.load_hf(vit_cls["folder"])
    assert isinstance(module, ViT)
    assert (module.num_classes, module.width, module.depth, module.num_heads, module.mlp_dim,
            module.image_size, module.patch_size, module.layer_norm_eps, module.act,
            module.qkv_bias) == (7, 48, 3, 4, 96, 32, 8, 1e-12, "gelu", True)
    logits, aux = module.apply(variables, jnp.asarray(vit_cls["x"]), train=False)
    _close(logits, vit_cls["logits"])


def test_vit_model_bin_no_qkv_bias(vit_model_bin):
    module, variables = convert.load_hf(vit_model_bin["folder"])
    assert not (Path(vit_model_bin["folder"]) / "model.safetensors").exists()
    assert module.num_classes == 0 and module.pool == "token" and not module.qkv_bias
    assert "bias" not in variables["params"]["blocks_0"]["attn"]["query"]
    out, aux = module.apply(variables, jnp.asarray(vit_model_bin["x"]), train=False)
    _close(aux["encoded"], vit_model_bin["hidden"])
    _close(out, vit_model_bin["hidden"][:, 0])  # pooled = cls token (HF's pooler is ignored)


def test_raw_state_dict_with_transformers5_names(vit_model_bin, tmp_path):
    """A torch.save(model.state_dict()) file uses the in-memory names (layers.i.*.q_proj ...)."""
    shutil.copy(Path(vit_model_bin["folder"]) / "config.json", tmp_path / "config.json")
    torch.save(vit_model_bin["model"].state_dict(), tmp_path / "pytorch_model.bin")
    module, variables = convert.load_hf(tmp_path)
    _, aux = module.apply(variables, jnp.asarray(vit_model_bin["x"]), train=False)
    _close(aux["encoded"], vit_model_bin["hidden"])


def test_sharded_and_bfloat16_files(vit_cls, tmp_path):
    """model.safetensors.index.json shards, and bf16 tensors (read through torch, as float32)."""
    from safetensors.torch import load_file, save_file
    vit_cls["model"].save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, ref = convert.load_hf(vit_cls["folder"])
    _, sharded = convert.load_hf(tmp_path / "sharded")
    jax.tree.map(np.testing.assert_array_equal, sharded, ref)
    folder = _copy_with_config(vit_cls["folder"], tmp_path / "bf16")
    tensors = {k: v.bfloat16() for k, v in load_file(folder / "model.safetensors").items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    _, half = convert.load_hf(folder)
    leaf = half["params"]["blocks_1"]["mlp"]["fc1"]["kernel"]
    assert leaf.dtype == jnp.float32
    np.testing.assert_array_equal(
        leaf, tensors["vit.encoder.layer.1.intermediate.dense.weight"].float().numpy().T)


@pytest.mark.parametrize("hf_act,ours", [("gelu_pytorch_tanh", "gelu_tanh"), ("quick_gelu", "quick_gelu"),
                                         ("relu", "relu"), ("silu", "silu")])
def test_hidden_act_mapping(hf_act, ours, tmp_path):
    cfg = ViTConfig(image_size=16, qkv_bias=True, num_labels=3,
                    **{**BASE, "num_hidden_layers": 1, "hidden_act": hf_act})
    model = _perturb(ViTForImageClassification(cfg), 7)
    x, xt = _images(4, 16)
    with torch.no_grad():
        logits = model(xt).logits
    module, variables = convert.load_hf(_save(model, tmp_path))
    assert module.act == ours
    _close(module.apply(variables, jnp.asarray(x))[0], logits)


def test_vit_mae_model_as_backbone(mae_model):
    module, variables = convert.load_hf(mae_model["folder"])
    assert module.posemb == "sincos2d" and module.num_classes == 0
    assert "pos_embed" not in variables["params"]
    _, aux = module.apply(variables, jnp.asarray(mae_model["x"]))
    enc = np.asarray(aux["encoded"])
    _close(enc, mae_model["sorted_hidden"])  # sorted noise: HF keeps the patch order
    # Random noise: HF's tokens are shuffled; put them back in patch order with ids_restore.
    hf = mae_model["out"].last_hidden_state.numpy()
    restore = mae_model["out"].ids_restore.numpy()
    unshuffled = np.take_along_axis(hf[:, 1:], restore[:, :, None], axis=1)
    _close(enc[:, 0], hf[:, 0])
    _close(enc[:, 1:], unshuffled)


def test_vit_mae_for_pretraining(mae_pretrain):
    from vit_jax.models.mae import MAE
    module, variables = convert.load_hf(mae_pretrain["folder"])
    assert isinstance(module, MAE)
    assert (module.decoder_width, module.decoder_depth, module.decoder_heads,
            module.decoder_mlp_dim, module.mask_ratio, module.norm_pix_loss) == \
        (32, 2, 4, 80, 0.6, mae_pretrain["norm_pix"])
    assert module.encoder.qkv_bias == (not mae_pretrain["norm_pix"])
    out = module.apply(variables, jnp.asarray(mae_pretrain["x"]),
                       noise=jnp.asarray(mae_pretrain["noise"].numpy()))
    hf = mae_pretrain["out"]
    _close(out["mask"], hf.mask)
    _close(out["pred"], hf.logits)
    _close(out["loss"], hf.loss)


# ----------------------------------------------------------------------------- save_hf

def test_save_hf_round_trip_classification(vit_cls, tmp_path):
    module, variables = convert.load_hf(vit_cls["folder"])
    convert.save_hf(module, variables, tmp_path / "out")
    back = ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = back(torch.from_numpy(vit_cls["x"].transpose(0, 3, 1, 2).copy())).logits
    _close(logits, vit_cls["logits"])


def _random_variables(module: ViT, shape: tuple[int, ...], seed: int) -> dict:
    """Random values for every parameter (init's LayerNorm 1/0 and zero biases hide swaps);
    eval_shape + numpy is also much faster than an eager init on CPU."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32), shapes)


@pytest.mark.parametrize("num_classes,scan", [(0, False), (5, True)])
def test_save_hf_from_vit_jax(num_classes, scan, tmp_path):
    """A fresh vit_jax ViT with non-HF-default choices HF can still express."""
    module = ViT(num_classes=num_classes, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=72,
                 image_size=24, fused_qkv=True, patch_bias=False, act="quick_gelu",
                 qkv_bias=False, head_init_std=0.5, scan=scan)
    variables = _random_variables(module, (1, 24, 24, 3), seed=num_classes)
    x, xt = _images(5, 24)
    out, aux = module.apply(variables, jnp.asarray(x))
    convert.save_hf(module, variables, tmp_path, id2label={i: f"c{i}" for i in range(num_classes)})
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["hidden_act"] == "quick_gelu" and cfg["qkv_bias"] is False
    with torch.no_grad():
        if num_classes:
            hf = ViTForImageClassification.from_pretrained(tmp_path).eval()
            assert hf.config.id2label[3] == "c3"
            _close(out, hf(xt).logits)
        else:
            _close(aux["encoded"], ViTModel.from_pretrained(tmp_path).eval()(xt).last_hidden_state)
    # ... and back again.
    module2, variables2 = convert.load_hf(tmp_path)
    _close(module2.apply(variables2, jnp.asarray(x))[0], out)


@pytest.mark.parametrize("fields,words", [
    (dict(pool="gap", class_token=False), ["pool='gap'", "class_token=False"]),
    (dict(posemb="sincos2d"), ["posemb='sincos2d'"]),
    (dict(init_values=1e-5), ["layer scale"]),
    (dict(pool="gap"), ["pool='gap'", "fc_norm"]),
    (dict(norm_layer="rmsnorm", pre_norm=True), ["rmsnorm", "pre_norm"]),
])
def test_save_hf_rejects_what_hf_cannot_express(fields, words, tmp_path):
    module = ViT(num_classes=3, patch_size=8, width=32, depth=1, num_heads=2, image_size=16,
                 **fields)
    with pytest.raises(ConversionError) as e:  # the settings are checked before the params
        convert.save_hf(module, {"params": {}}, tmp_path)
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "config.json").exists()


# ----------------------------------------------------------------------------- load_hf errors

def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert.load_hf(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.load_hf(tmp_path)


def test_unknown_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BeitModel"],
                                                      "model_type": "beit"}))
    with pytest.raises(ConversionError) as e:
        convert.load_hf(tmp_path)
    for arch in convert.SUPPORTED_HF_ARCHITECTURES:
        assert arch in str(e.value)
    assert "BeitModel" in str(e.value)


def test_missing_weights(vit_cls, tmp_path):
    shutil.copy(Path(vit_cls["folder"]) / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert.load_hf(tmp_path)


def _copy_with_config(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_shape_mismatch_names_key_and_shapes(vit_cls, tmp_path):
    folder = _copy_with_config(vit_cls["folder"], tmp_path / "m", intermediate_size=64)
    with pytest.raises(ConversionError) as e:
        convert.load_hf(folder)
    msg = str(e.value)
    assert "encoder.layer.0.intermediate.dense.weight" in msg
    assert "(96, 48)" in msg and "(48, 64)" in msg


def test_config_weights_disagree_on_qkv_bias(vit_cls, tmp_path):
    folder = _copy_with_config(vit_cls["folder"], tmp_path / "m", qkv_bias=False)
    with pytest.raises(ConversionError, match=r"attention\.attention\.query\.bias.*qkv_bias"):
        convert.load_hf(folder)


def test_unused_and_missing_keys(vit_cls, tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = _copy_with_config(vit_cls["folder"], tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["vit.extra.weight"] = np.zeros(3, np.float32)
    del tensors["vit.encoder.layer.2.layernorm_after.bias"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError) as e:
        convert.load_hf(folder)
    assert "missing key(s): ['encoder.layer.2.layernorm_after.bias']" in str(e.value)
    assert "unused key(s): ['extra.weight']" in str(e.value)


def test_unsupported_activation(vit_cls, tmp_path):
    folder = _copy_with_config(vit_cls["folder"], tmp_path / "m", hidden_act="mish")
    with pytest.raises(ConversionError, match="hidden_act 'mish'"):
        convert.load_hf(folder)


def test_mae_posemb_check(mae_model, tmp_path):
    """A ViTMAE whose stored 'fixed' table is not sin-cos (HF's random init leaves zeros)."""
    model = ViTMAEModel(mae_model["model"].config)
    model.load_state_dict(mae_model["model"].state_dict())
    with torch.no_grad():
        model.embeddings.position_embeddings.zero_()
    folder = _save(model, tmp_path)
    with pytest.raises(ConversionError, match="embeddings.position_embeddings.*check_posemb=False"):
        convert.load_hf(folder)
    module, _ = convert.load_hf(folder, check_posemb=False, drop_path_rate=0.1)
    assert module.drop_path_rate == 0.1


def test_overrides(vit_cls):
    module, variables = convert.load_hf(vit_cls["folder"], scan=True)
    assert module.scan and "blocks" in variables["params"]
    _close(module.apply(variables, jnp.asarray(vit_cls["x"]))[0], vit_cls["logits"])
    with pytest.raises(ConversionError, match="unknown override"):
        convert.load_hf(vit_cls["folder"], not_a_field=1)
    with pytest.raises(ConversionError, match=r"'classifier.weight'.*head/kernel is \(48, 10\)"):
        convert.load_hf(vit_cls["folder"], num_classes=10)  # would change a parameter


def test_mae_transformers4_decoder_names(mae_pretrain, tmp_path):
    """Files written by transformers 4 (the Hub's) name decoder layers decoder.decoder_layers.N."""
    from safetensors.numpy import load_file, save_file
    folder = _copy_with_config(mae_pretrain["folder"], tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    renamed = {re.sub(r"decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers.", k): v
               for k, v in tensors.items()}
    assert renamed.keys() != tensors.keys()
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _, ref = convert.load_hf(mae_pretrain["folder"])
    _, old = convert.load_hf(folder)
    jax.tree.map(np.testing.assert_array_equal, old, ref)


def test_mae_overrides_reach_the_encoder(mae_pretrain):
    module, variables = convert.load_hf(mae_pretrain["folder"], drop_path_rate=0.1,
                                        mask_ratio=0.5)
    assert module.encoder.drop_path_rate == 0.1 and module.mask_ratio == 0.5


# ----------------------------------------------------------------------------- official MAE

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
    _close(out["pred"], mae_pretrain["out"].logits)
    _close(out["loss"], mae_pretrain["out"].loss)


def test_official_mae_encoder_only_matches_hf(mae_model, tmp_path):
    """The released mae_pretrain_vit_*.pth hold the encoder only: a ViT backbone."""
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": _official_from_hf(mae_model["model"])}, path)
    # HF's eps (1e-12) differs from the official 1e-6: override it for exact parity.
    module, variables = convert.load_mae_checkpoint(path, num_heads=4, layer_norm_eps=1e-12)
    assert isinstance(module, ViT) and module.num_classes == 0 and module.posemb == "learn"
    _, aux = module.apply(variables, jnp.asarray(mae_model["x"]))
    _close(aux["encoded"], mae_model["sorted_hidden"])


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
    _close(module2.apply(variables2, jnp.ones((1, 16, 16, 3)))[0], np.asarray(out))


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
