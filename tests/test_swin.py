"""Swin: parameter counts, parity with randomly initialised Hugging Face Swin models
(transformers, torch CPU), any-resolution behaviour and errors.

HF models are tiny, use non-default configs, are built once per module and have every
parameter perturbed (LayerNorm 1/0, zero biases and zero bias tables would hide swapped or
dropped tensors).  Outputs must agree to 1e-4 in float32 eval mode.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models.swin import Swin, effective_window, relative_position_index, shift_mask

# (name, HF config overrides, image size): every case uses windows that fit every stage
# (transformers 5.x cannot clamp a window, see hf_swin), with padding where noted.
HF_CASES = {
    # grid 14 -> pad to 16 (shifted), stage 2 at 7 -> pad to 8; gelu_new, non-default eps
    "pad_w4": (dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
                    hidden_act="gelu_new", layer_norm_eps=1e-6, qkv_bias=False), 56),
    # grid 18 (pad to 20), 9 (odd: pad to 12, then merging pads to 10), 5 (pad to 8)
    "odd_w4": (dict(embed_dim=24, depths=[1, 2, 2], num_heads=[1, 2, 4], window_size=4,
                    mlp_ratio=2.0), 72),
    # patch 4, window 7: grid 10 -> pad to 14 with the shift mask
    "w7": (dict(embed_dim=16, depths=[2], num_heads=[2], window_size=7), 40),
    # the official `ape`: an absolute position embedding added after the patch norm; grids 12
    # and 6 (pad to 8), both above the window, so HF shifts every second block at 64 px too
    # (it decides the shift from config.image_size, not from the input)
    "ape_w4": (dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
                    use_absolute_embeddings=True), 48),
}


# ----------------------------------------------------------------------------- static pieces

@pytest.mark.parametrize("name,count", [("swin_tiny_patch4_window7_224", 28_288_354),
                                        ("swin_small_patch4_window7_224", 49_606_258),
                                        ("swin_base_patch4_window7_224", 87_768_224)])
def test_param_counts(name: str, count: int) -> None:
    assert models.param_count(models.create(name), (224, 224, 3)) == count


def test_registry_pattern() -> None:
    m = models.create("swin_large_patch4_window12_384", num_classes=10)
    assert (m.width, m.window_size, m.image_size, m.num_classes) == (192, 12, 384, 10)
    assert "swin_tiny_patch4_window7_224" in models.list_models("swin_*")


def test_relative_index_and_mask() -> None:
    idx = relative_position_index(2, 2)   # offsets (dh, dw) in {-1,0,1}^2, table 3x3
    assert idx[0, 0] == 4 and idx[0, 3] == 0 and idx[3, 0] == 8 and idx[1, 0] == 5
    # a clamped window reads the centre of the bigger table
    assert relative_position_index(1, 7)[0, 0] == 6 * 13 + 6
    m = shift_mask(8, 8, 4, 2)
    assert m.shape == (4, 16, 16) and set(np.unique(m)) == {0.0, -100.0}
    assert not m[0].any()                  # the top-left window never mixes regions
    assert effective_window(3, 3, 7, True) == (3, 0)
    assert effective_window(14, 9, 7, True) == (7, 3)


# ----------------------------------------------------------------------------- HF parity

import torch
from transformers import SwinConfig, SwinForImageClassification, SwinModel  # noqa: E402

from tests.hf_parity import close, copy_with_config, images, perturb, save  # noqa: E402
from vit_jax import convert  # noqa: E402
from vit_jax.convert import ConversionError  # noqa: E402


@pytest.fixture(scope="module", params=sorted(HF_CASES))
def hf_case(request: Any, tmp_path_factory: Any) -> dict[str, Any]:
    """Both HF architectures for one config, saved, loaded and run once."""
    kw, size = HF_CASES[request.param]
    root = tmp_path_factory.mktemp(f"swin_{request.param}")
    cfg = SwinConfig(image_size=size, patch_size=4, num_labels=5, **kw)
    x, xt = images(1, size)
    out: dict[str, Any] = {"x": x, "xt": xt, "size": size, "root": root}
    for arch, seed in ((SwinModel, 0), (SwinForImageClassification, 1)):
        torch.manual_seed(seed)
        hf = perturb(arch(cfg), seed, scale=0.2)
        folder = save(hf, root / arch.__name__)
        with torch.no_grad():
            ref = hf(xt)
        module, variables = convert.load_hf(folder)
        ours, aux = jax.jit(lambda v, im, m=module: m.apply(v, im))(variables, jnp.asarray(x))
        out[arch.__name__] = dict(hf=hf, ref=ref, module=module, variables=variables,
                                  out=ours, aux=aux, folder=folder)
    return out


def test_hf_swin_model(hf_case: dict[str, Any]) -> None:
    r = hf_case["SwinModel"]
    assert r["module"].num_classes == 0
    close(r["aux"]["encoded"], r["ref"].last_hidden_state)
    close(r["out"], r["ref"].pooler_output)


def test_hf_swin_classifier(hf_case: dict[str, Any]) -> None:
    r = hf_case["SwinForImageClassification"]
    assert r["module"].num_classes == 5
    close(r["out"], r["ref"].logits)
    stages = r["aux"]["stages"]
    assert len(stages) == len(r["module"].depths)
    b, h, w, c = stages[-1].shape
    assert r["aux"]["encoded"].shape == (b, h * w, c)


def test_hf_new_key_names(hf_case: dict[str, Any], tmp_path: Path) -> None:
    """transformers >= 5 module names (q_proj, mlp.fc1, ...) load the same as hub names."""
    from safetensors.torch import save_file
    r = hf_case["SwinForImageClassification"]
    folder = tmp_path / "new_names"
    folder.mkdir()
    (folder / "config.json").write_text((r["folder"] / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in r["hf"].state_dict().items()},
              str(folder / "model.safetensors"))
    _, variables = convert.load_hf(folder)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, r["variables"])
    assert all(jax.tree.leaves(same))


def test_save_hf_round_trip(hf_case: dict[str, Any], tmp_path: Path) -> None:
    r = hf_case["SwinForImageClassification"]
    folder = convert.save_hf(r["module"], r["variables"], tmp_path / "export")
    hf = SwinForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        close(r["out"], hf(hf_case["xt"]).logits)


def test_conversion_errors(hf_case: dict[str, Any], tmp_path: Path) -> None:
    r = hf_case["SwinModel"]
    wide = 2 * r["hf"].config.embed_dim          # a config that no longer matches the weights
    folder = copy_with_config(r["folder"], tmp_path / "wide", embed_dim=wide)
    with pytest.raises(ConversionError, match="shape mismatch"):
        convert.load_hf(folder)
    # ape declared in the config but no position embedding in the weights
    ape = not r["hf"].config.use_absolute_embeddings
    folder = copy_with_config(r["folder"], tmp_path / "abs", use_absolute_embeddings=ape)
    with pytest.raises(ConversionError, match="position_embeddings" if ape else "unused|unexpected"):
        convert.load_hf(folder)


def test_ape_resized_like_hf(hf_case: dict[str, Any]) -> None:
    """At another input size the absolute position embedding is resized as Hugging Face's
    interpolate_pos_encoding does (torch bicubic), and it is a parameter of the declared size."""
    r = hf_case["SwinModel"]
    if not r["module"].ape:
        assert "absolute_pos_embed" not in r["variables"]["params"]
        return
    g0 = hf_case["size"] // 4
    assert r["variables"]["params"]["absolute_pos_embed"].shape == (1, g0 * g0, 16)
    x, xt = images(1, 64)
    with torch.no_grad():
        ref = r["hf"](xt, interpolate_pos_encoding=True)
    ours, _ = r["module"].apply(r["variables"], jnp.asarray(x))
    close(ours, ref.pooler_output)


def test_ape_init_std() -> None:
    m = Swin(num_classes=0, patch_size=2, width=48, depths=(2,), num_heads=(3,), window_size=7,
             image_size=28, ape=True, ape_init_std=2.0)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 3)))
    table = np.asarray(v["params"]["absolute_pos_embed"])
    # the official trunc_normal_(a=-2, b=2): at std 2 the bounds are +-1 std, so the drawn std is
    # 2 * sqrt(1 - 2 phi(1) / (2 Phi(1) - 1)) = 1.077
    phi1, cdf1 = math.exp(-0.5) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    want = 2 * math.sqrt(1 - 2 * phi1 / (2 * cdf1 - 1))
    assert table.shape == (1, 196, 48) and abs(table.std() - want) < 0.03
    assert np.abs(table).max() <= 2.0
    with pytest.raises(ValueError, match="multiple of patch_size"):
        Swin(image_size=30, patch_size=4, ape=True)


# ----------------------------------------------------------------------------- any resolution

@pytest.fixture(scope="module")
def tiny_shaped() -> tuple[Swin, dict]:
    """swin_tiny's structure (4 stages, window 7) at a small width."""
    # stages 3 and 4 (6 and 3 at 96 pixels) are clamped and unshifted: one block each suffices.
    m = models.create("swin_tiny_patch4_window7_224", width=8, depths=(2, 2, 1, 1),
                      num_heads=(1, 2, 2, 4), num_classes=3, drop_path_rate=0.1)
    # random values in the init's shapes: compiling m.init costs ~20 s on a busy CPU.
    shapes = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 96, 96, 3)))
    rng = np.random.default_rng(0)
    return m, jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)


def test_96_crop_window7(tiny_shaped: tuple[Swin, dict]) -> None:
    m, v = tiny_shaped
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 96, 96, 3)), jnp.float32)
    out, aux = jax.jit(m.apply)(v, x)
    assert out.shape == (2, 3)
    assert [s.shape[1:3] for s in aux["stages"]] == [(24, 24), (12, 12), (6, 6), (3, 3)]
    assert aux["encoded"].shape == (2, 9, 64) and aux["pre_logits"].shape == (2, 64)
    assert np.isfinite(np.asarray(out)).all()
    # train mode with drop path runs and differs from eval
    train = jax.jit(lambda v, x, k: m.apply(v, x, train=True, rngs={"dropout": k}))
    out_t, _ = train(v, x, jax.random.key(1))
    assert not np.allclose(np.asarray(out_t), np.asarray(out))


def test_errors(tiny_shaped: tuple[Swin, dict]) -> None:
    m, v = tiny_shaped
    with pytest.raises(ValueError, match="not divisible by patch size 4.*multiple of 4"):
        m.apply(v, jnp.zeros((1, 30, 30, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        m.apply(v, jnp.zeros((30, 32, 3)))
    with pytest.raises(ValueError, match="channels"):
        m.apply(v, jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="same length"):
        Swin(depths=(2, 2), num_heads=(3,))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Swin(width=10, depths=(2,), num_heads=(3,))
    with pytest.raises(ValueError, match="Unknown override"):
        models.create("swin_tiny_patch4_window7_224", hidden_size=3)
