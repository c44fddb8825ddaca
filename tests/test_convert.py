"""vit_jax.convert against randomly initialised Hugging Face models (transformers, torch CPU).

Every HF model is tiny, uses a non-default config and is built once per module; all its
parameters are perturbed away from their init (LayerNorm 1/0, zero biases would hide
swapped or dropped tensors).  Outputs must agree to 1e-4 in float32 eval mode.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch

from transformers import ViTConfig, ViTForImageClassification, ViTMAEModel, ViTModel

from tests import hf_parity
from tests.hf_parity import BASE, close, copy_with_config, images, perturb, save
from vit_jax import convert
from vit_jax.convert import ConversionError
from vit_jax.models.vit import ViT

# Module-scoped HF ViTMAE fixtures, shared with test_convert_mae_official.py (pytest finds a
# fixture under its module-level name).
mae_model = hf_parity.mae_model
mae_pretrain = hf_parity.mae_pretrain


# ----------------------------------------------------------------------------- HF fixtures

@pytest.fixture(scope="module")
def vit_cls(tmp_path_factory) -> dict:
    """ViTForImageClassification, 32px, 7 labels, safetensors."""
    torch.manual_seed(0)
    model = perturb(ViTForImageClassification(
        ViTConfig(image_size=32, qkv_bias=True, num_labels=7, **BASE)), 1)
    x, xt = images(0, 32)
    with torch.no_grad():
        logits = model(xt).logits
    return dict(model=model, x=x, xt=xt, logits=logits,
                folder=save(model, tmp_path_factory.mktemp("vit_cls")))


@pytest.fixture(scope="module")
def vit_model_bin(tmp_path_factory) -> dict:
    """ViTModel (with pooler), 40px, qkv_bias False, pytorch_model.bin."""
    torch.manual_seed(1)
    model = perturb(ViTModel(ViTConfig(image_size=40, qkv_bias=False, **BASE)), 2)
    x, xt = images(1, 40)
    with torch.no_grad():
        hidden = model(xt).last_hidden_state
    return dict(model=model, x=x, hidden=hidden,
                folder=save(model, tmp_path_factory.mktemp("vit_bin"), safe=False))


# ----------------------------------------------------------------------------- load_hf parity

def test_vit_for_image_classification(vit_cls):
    module, variables = convert.load_hf(vit_cls["folder"])
    assert isinstance(module, ViT)
    assert (module.num_classes, module.width, module.depth, module.num_heads, module.mlp_dim,
            module.image_size, module.patch_size, module.layer_norm_eps, module.act,
            module.qkv_bias) == (7, 48, 3, 4, 96, 32, 8, 1e-12, "gelu", True)
    logits, aux = module.apply(variables, jnp.asarray(vit_cls["x"]), train=False)
    close(logits, vit_cls["logits"])


def test_vit_model_bin_no_qkv_bias(vit_model_bin):
    module, variables = convert.load_hf(vit_model_bin["folder"])
    assert not (Path(vit_model_bin["folder"]) / "model.safetensors").exists()
    assert module.num_classes == 0 and module.pool == "token" and not module.qkv_bias
    assert "bias" not in variables["params"]["blocks_0"]["attn"]["query"]
    out, aux = module.apply(variables, jnp.asarray(vit_model_bin["x"]), train=False)
    close(aux["encoded"], vit_model_bin["hidden"])
    close(out, vit_model_bin["hidden"][:, 0])  # pooled = cls token (HF's pooler is ignored)


def test_raw_state_dict_with_transformers5_names(vit_model_bin, tmp_path):
    """A torch.save(model.state_dict()) file uses the in-memory names (layers.i.*.q_proj ...)."""
    shutil.copy(Path(vit_model_bin["folder"]) / "config.json", tmp_path / "config.json")
    torch.save(vit_model_bin["model"].state_dict(), tmp_path / "pytorch_model.bin")
    module, variables = convert.load_hf(tmp_path)
    _, aux = module.apply(variables, jnp.asarray(vit_model_bin["x"]), train=False)
    close(aux["encoded"], vit_model_bin["hidden"])


def test_sharded_and_bfloat16_files(vit_cls, tmp_path):
    """model.safetensors.index.json shards, and bf16 tensors (read through torch, as float32)."""
    from safetensors.torch import load_file, save_file
    vit_cls["model"].save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, ref = convert.load_hf(vit_cls["folder"])
    _, sharded = convert.load_hf(tmp_path / "sharded")
    jax.tree.map(np.testing.assert_array_equal, sharded, ref)
    folder = copy_with_config(vit_cls["folder"], tmp_path / "bf16")
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
    model = perturb(ViTForImageClassification(cfg), 7)
    x, xt = images(4, 16)
    with torch.no_grad():
        logits = model(xt).logits
    module, variables = convert.load_hf(save(model, tmp_path))
    assert module.act == ours
    close(module.apply(variables, jnp.asarray(x))[0], logits)


def test_vit_mae_model_as_backbone(mae_model):
    module, variables = convert.load_hf(mae_model["folder"])
    assert module.posemb == "sincos2d" and module.num_classes == 0
    assert "pos_embed" not in variables["params"]
    _, aux = module.apply(variables, jnp.asarray(mae_model["x"]))
    enc = np.asarray(aux["encoded"])
    close(enc, mae_model["sorted_hidden"])  # sorted noise: HF keeps the patch order
    # Random noise: HF's tokens are shuffled; put them back in patch order with ids_restore.
    hf = mae_model["out"].last_hidden_state.numpy()
    restore = mae_model["out"].ids_restore.numpy()
    unshuffled = np.take_along_axis(hf[:, 1:], restore[:, :, None], axis=1)
    close(enc[:, 0], hf[:, 0])
    close(enc[:, 1:], unshuffled)


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
    close(out["mask"], hf.mask)
    close(out["pred"], hf.logits)
    close(out["loss"], hf.loss)


# ----------------------------------------------------------------------------- save_hf

def test_save_hf_round_trip_classification(vit_cls, tmp_path):
    module, variables = convert.load_hf(vit_cls["folder"])
    convert.save_hf(module, variables, tmp_path / "out")
    back = ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = back(vit_cls["xt"]).logits
    close(logits, vit_cls["logits"])


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
    x, xt = images(5, 24)
    out, aux = module.apply(variables, jnp.asarray(x))
    convert.save_hf(module, variables, tmp_path, id2label={i: f"c{i}" for i in range(num_classes)})
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["hidden_act"] == "quick_gelu" and cfg["qkv_bias"] is False
    with torch.no_grad():
        if num_classes:
            hf = ViTForImageClassification.from_pretrained(tmp_path).eval()
            assert hf.config.id2label[3] == "c3"
            close(out, hf(xt).logits)
        else:
            close(aux["encoded"], ViTModel.from_pretrained(tmp_path).eval()(xt).last_hidden_state)
    # ... and back again.
    module2, variables2 = convert.load_hf(tmp_path)
    close(module2.apply(variables2, jnp.asarray(x))[0], out)


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


def test_shape_mismatch_names_key_and_shapes(vit_cls, tmp_path):
    folder = copy_with_config(vit_cls["folder"], tmp_path / "m", intermediate_size=64)
    with pytest.raises(ConversionError) as e:
        convert.load_hf(folder)
    msg = str(e.value)
    assert "encoder.layer.0.intermediate.dense.weight" in msg
    assert "(96, 48)" in msg and "(48, 64)" in msg


def test_config_weights_disagree_on_qkv_bias(vit_cls, tmp_path):
    folder = copy_with_config(vit_cls["folder"], tmp_path / "m", qkv_bias=False)
    with pytest.raises(ConversionError, match=r"attention\.attention\.query\.bias.*qkv_bias"):
        convert.load_hf(folder)


def test_unused_and_missing_keys(vit_cls, tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = copy_with_config(vit_cls["folder"], tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["vit.extra.weight"] = np.zeros(3, np.float32)
    del tensors["vit.encoder.layer.2.layernorm_after.bias"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError) as e:
        convert.load_hf(folder)
    assert "missing key(s): ['encoder.layer.2.layernorm_after.bias']" in str(e.value)
    assert "unused key(s): ['extra.weight']" in str(e.value)


def test_unsupported_activation(vit_cls, tmp_path):
    folder = copy_with_config(vit_cls["folder"], tmp_path / "m", hidden_act="mish")
    with pytest.raises(ConversionError, match="hidden_act 'mish'"):
        convert.load_hf(folder)


def test_mae_posemb_check(mae_model, tmp_path):
    """A ViTMAE whose stored 'fixed' table is not sin-cos (HF's random init leaves zeros)."""
    model = ViTMAEModel(mae_model["model"].config)
    model.load_state_dict(mae_model["model"].state_dict())
    with torch.no_grad():
        model.embeddings.position_embeddings.zero_()
    folder = save(model, tmp_path)
    with pytest.raises(ConversionError, match="embeddings.position_embeddings.*check_posemb=False"):
        convert.load_hf(folder)
    module, _ = convert.load_hf(folder, check_posemb=False, drop_path_rate=0.1)
    assert module.drop_path_rate == 0.1


def test_overrides(vit_cls):
    module, variables = convert.load_hf(vit_cls["folder"], scan=True)
    assert module.scan and "blocks" in variables["params"]
    close(module.apply(variables, jnp.asarray(vit_cls["x"]))[0], vit_cls["logits"])
    with pytest.raises(ConversionError, match="unknown override"):
        convert.load_hf(vit_cls["folder"], not_a_field=1)
    with pytest.raises(ConversionError, match=r"'classifier.weight'.*head/kernel is \(48, 10\)"):
        convert.load_hf(vit_cls["folder"], num_classes=10)  # would change a parameter


def test_mae_transformers4_decoder_names(mae_pretrain, tmp_path):
    """Files written by transformers 4 (the Hub's) name decoder layers decoder.decoder_layers.N."""
    from safetensors.numpy import load_file, save_file
    folder = copy_with_config(mae_pretrain["folder"], tmp_path / "m")
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
