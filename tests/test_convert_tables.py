"""vit_jax.convert.tables: every family's key table, applied backwards (our params -> checkpoint
tensors) and then forwards (-> our params), is the identity; so is save_hf -> load_hf.

No transformers or torch needed: random values in each module's own parameter shapes
(eval_shape), so a table that drops, duplicates or mis-transposes a tensor fails here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import convert
from vit_jax.convert import hf_clip, hf_cvt, hf_dinov2, hf_swin, hf_vit, mae_official
from vit_jax.convert.tables import Row, block_rows, export_rows, import_rows
from vit_jax.convert.weights import (ConversionError, Params, StateDict, dummy_images, flatten,
                                     mae_init_args, make_mae)
from vit_jax.models.cvt import CvT
from vit_jax.models.swin import Swin
from vit_jax.models.vit import ViT

SMALL = dict(patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=24, image_size=8)


def _random(module, args: tuple, kwargs: dict | None = None, seed: int = 0) -> dict:
    """Random values (not init's ones and zeros, which would hide swaps) in init's shapes."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda a, kw: module.init(jax.random.key(0), *a, **kw),
                            args, kwargs or {})
    return jax.tree.map(lambda s: np.asarray(rng.normal(size=s.shape), np.float32), shapes)


def _assert_same(got: dict, want: dict) -> None:
    got, want = flatten(got), flatten(want)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def _round_trip(rows: tuple[Row, ...], variables: dict) -> dict[str, np.ndarray]:
    """export_rows then import_rows; asserts the identity and that no tensor is left over."""
    state = export_rows(rows, variables)
    sd = StateDict(state, "round trip")
    targets = {c: Params(sd) for c in variables}
    import_rows(rows, targets)
    sd.finish()  # raises for missing or unused keys
    for c, tree in variables.items():
        _assert_same(targets[c].tree(), tree)
    return state


def _vit(**kw) -> ViT:
    return ViT(**{**SMALL, **kw})


def test_vit_table():
    module = _vit(num_classes=3)
    variables = _random(module, (dummy_images(module),))
    state = _round_trip(hf_vit.vit_rows(module.depth) + hf_vit.CLASSIFIER, variables)
    # torch layouts: Linear (out, in), Conv2d (out, in, kh, kw)
    p = variables["params"]
    np.testing.assert_array_equal(state["encoder.layer.1.intermediate.dense.weight"],
                                  p["blocks_1"]["mlp"]["fc1"]["kernel"].T)
    np.testing.assert_array_equal(state["embeddings.patch_embeddings.projection.weight"],
                                  p["embedding"]["kernel"].transpose(3, 2, 0, 1))


def test_mae_table():
    module = make_mae(_vit(num_classes=0, posemb="sincos2d"), decoder_width=8, decoder_depth=1,
                      decoder_heads=2, decoder_mlp_dim=12, mask_ratio=0.5, norm_pix_loss=False)
    args, kwargs = mae_init_args(module)
    _round_trip(hf_vit.mae_rows(module), _random(module, args, kwargs))


def test_clip_table():
    module = _vit(num_classes=5, pre_norm=True, final_norm=False, fc_norm=True,
                  patch_bias=False, head_bias=False)
    state = _round_trip(hf_clip.clip_rows(module), _random(module, (dummy_images(module),)))
    assert state["embeddings.class_embedding"].shape == (16,)          # unbatched in HF
    assert state["embeddings.position_embedding.weight"].shape == (5, 16)
    assert "embeddings.patch_embedding.bias" not in state


def test_dinov2_table():
    module = hf_dinov2.dinov2_vit(**SMALL, init_values=0.5)
    state = _round_trip(hf_dinov2.dinov2_rows(module.depth),
                        _random(module, (dummy_images(module),)))
    assert "encoder.layer.1.layer_scale2.lambda1" in state


@pytest.mark.parametrize("num_classes", [0, 3])
def test_swin_table(num_classes):
    module = Swin(num_classes=num_classes, patch_size=2, width=8, depths=(2, 1),
                  num_heads=(2, 2), window_size=2, image_size=8)
    rows = hf_swin.swin_rows(module) + (hf_vit.CLASSIFIER if num_classes else ())
    _round_trip(rows, _random(module, (jnp.zeros((1, 8, 8, 3)),)))


def _cvt() -> CvT:
    return CvT(num_classes=4, widths=(8, 16), depths=(1, 2), num_heads=(1, 2),
               mlp_ratio=(2.0, 3.0), patch_sizes=(3, 3), patch_strides=(2, 2),
               patch_paddings=(1, 1), kernel_qkv=(3, 3), stride_q=(1, 1), stride_kv=(2, 2),
               padding_q=(1, 1), padding_kv=(1, 1), class_token=(False, True),
               qkv_bias=(True, False), dropout=(0.0, 0.0), attn_dropout=(0.0, 0.0),
               drop_path_rate=(0.0, 0.1))


def test_cvt_table():
    module = _cvt()
    variables = _random(module, (jnp.zeros((1, 16, 16, 3)),))
    assert set(variables) == {"params", "batch_stats"}
    backbone, top = hf_cvt.cvt_rows(module)
    state = _round_trip(backbone + top, variables)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 3 * 3 and all(state[k].dtype == np.int64 for k in counters)


@pytest.mark.parametrize("kind", ["finetuned", "pretrain"])
def test_mae_official_table(kind):
    if kind == "finetuned":
        module = _vit(num_classes=3, pool="gap", fc_norm=True, posemb="learn")
        args, kwargs = (dummy_images(module),), {}
    else:
        module = make_mae(_vit(num_classes=0, posemb="sincos2d", fc_norm=False),
                          decoder_width=8, decoder_depth=2, decoder_heads=2,
                          decoder_mlp_dim=12, mask_ratio=0.75, norm_pix_loss=True)
        args, kwargs = mae_init_args(module)
    state = _round_trip(mae_official.official_rows(module), _random(module, args, kwargs))
    assert "blocks.1.attn.qkv.weight" in state and "blocks.1.attn.query.weight" not in state


def test_fused_qkv_rows_are_q_k_v():
    """timm's fused (3D, D) projection: rows [q | k | v] of the torch weight."""
    rows = block_rows(qkv="attn.qkv", out="attn.proj", norms=("norm1", "norm2"),
                      mlp=("mlp.fc1", "mlp.fc2"))
    module = _vit(num_classes=0, depth=1)
    params = _random(module, (dummy_images(module),))["params"]["blocks_0"]
    state = export_rows(rows, {"params": params})
    w = state["attn.qkv.weight"]
    for i, name in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(w[16 * i:16 * (i + 1)], params["attn"][name]["kernel"].T)


def test_export_names_a_missing_parameter():
    module = _vit(num_classes=0)
    params = _random(module, (dummy_images(module),))["params"]
    del params["norm"]["scale"]
    with pytest.raises(ConversionError, match="has no 'norm/scale'"):
        export_rows(hf_vit.vit_rows(module.depth), {"params": params}, "a ViT")


# ----------------------------------------------------------------------------- whole folders

@pytest.mark.parametrize("scan", [False, True])
def test_vit_save_load_identity(scan, tmp_path):
    module = _vit(num_classes=3, scan=scan)
    variables = _random(module, (dummy_images(module),))
    convert.save_hf(module, variables, tmp_path)
    module2, variables2 = convert.load_hf(tmp_path, scan=scan)
    assert (module2.width, module2.depth, module2.num_classes, module2.scan) == (16, 2, 3, scan)
    _assert_same(variables2, variables)


def test_swin_save_load_identity(tmp_path):
    module = Swin(num_classes=3, patch_size=2, width=8, depths=(2, 1), num_heads=(2, 2),
                  window_size=2, image_size=8)
    variables = _random(module, (jnp.zeros((1, 8, 8, 3)),))
    convert.save_hf(module, variables, tmp_path)
    module2, variables2 = convert.load_hf(tmp_path)
    assert module2 == module
    _assert_same(variables2, variables)


def test_cvt_save_load_identity(tmp_path):
    module = _cvt()
    variables = _random(module, (jnp.zeros((1, 16, 16, 3)),))
    convert.save_hf(module, variables, tmp_path)
    module2, variables2 = convert.load_hf(tmp_path)
    assert module2 == module
    _assert_same(variables2, variables)
