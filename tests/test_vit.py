"""ViT backbone, shared layers and the model registry (tiny configs, CPU, fast)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models.posemb import resize_pos_embed, sincos_2d
from vit_jax.models.vit import ViT, scan_params, unscan_params

TINY = dict(num_classes=10, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64,
            image_size=16, head_init_std=0.02)


@pytest.fixture(scope="module")
def images() -> jax.Array:
    return jax.random.normal(jax.random.key(1), (2, 16, 16, 3), jnp.float32)


@pytest.fixture(scope="module")
def tiny() -> tuple[ViT, dict]:
    model = ViT(**TINY)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def _close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol, rtol=0)


# --------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("name,expected", [
    ("vit_base_patch16_224", 86_567_656),
    ("vit_base_patch32_224", 88_224_232),
    ("vit_large_patch16_224", 304_326_632),
    ("vit_huge_patch14_224", 632_045_800),
    ("deit_tiny_patch16_224", 5_717_416),
    ("deit_small_patch16_224", 22_050_664),
])
def test_param_counts(name, expected):
    assert models.param_count(models.create(name), (224, 224, 3)) == expected


def test_param_count_scan_layout_matches():
    assert models.param_count(models.create("vit_tiny_patch16_224", scan=True),
                              (224, 224, 3)) == 5_717_416


# --------------------------------------------------------------------------- position embeddings

def _mae_sincos_reference(gh: int, gw: int, d: int) -> np.ndarray:
    """Written from REFERENCE.md: first D/2 dims encode w (column), each half [sin | cos],
    omega_k = 10000^(-k/(D/4)), cls row zeros, tokens row-major."""
    q = d // 4
    out = np.zeros((1 + gh * gw, d))
    for i in range(gh):
        for j in range(gw):
            row = 1 + i * gw + j
            for k in range(q):
                om = 10000.0 ** (-k / q)
                out[row, k], out[row, q + k] = np.sin(j * om), np.cos(j * om)
                out[row, 2 * q + k], out[row, 3 * q + k] = np.sin(i * om), np.cos(i * om)
    return out


def test_sincos_mae_layout():
    got = sincos_2d(3, 5, 16, cls_token=True)
    assert got.shape == (1, 16, 16) and got.dtype == np.float32
    _close(got[0], _mae_sincos_reference(3, 5, 16), atol=1e-6)
    assert sincos_2d(3, 5, 16).shape == (1, 15, 16)


def test_sincos_model_has_no_pos_param(images):
    model = ViT(**TINY, posemb="sincos2d")
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    assert "pos_embed" not in params


def test_resize_pos_embed():
    pe = jax.random.normal(jax.random.key(0), (1, 1 + 16, 8))
    assert resize_pos_embed(pe, (4, 4), 1) is pe
    out = resize_pos_embed(pe, (6, 2), 1)
    assert out.shape == (1, 1 + 12, 8)
    _close(out[:, 0], pe[:, 0], atol=0)  # prefix token kept
    const = jnp.ones((1, 16, 8))          # a constant grid stays constant
    _close(resize_pos_embed(const, (7, 5), 0), jnp.ones((1, 35, 8)))


def test_other_resolution_runs(tiny):
    model, variables = tiny
    x = jnp.ones((2, 24, 32, 3))
    out, aux = model.apply(variables, x)
    assert out.shape == (2, 10)
    assert aux["patch_grid"] == (6, 8)
    assert aux["encoded"].shape == (2, 1 + 48, 32)


# --------------------------------------------------------------------------- call contract

def test_call_contract(tiny, images):
    model, variables = tiny
    out, aux = model.apply(variables, images, train=False)
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert aux["encoded"].shape == (2, 17, 32)
    assert aux["pre_logits"].shape == (2, 32)
    assert aux["patch_grid"] == (4, 4)
    _close(aux["pre_logits"], aux["encoded"][:, 0])
    feats, _ = model.clone(num_classes=0).apply(
        {"params": {k: v for k, v in variables["params"].items() if k != "head"}}, images)
    _close(feats, aux["pre_logits"])


def test_embed_encode_extension_point(tiny, images):
    model, variables = tiny
    tokens, cls = model.apply(variables, images, method=ViT.embed)
    assert tokens.shape == (2, 16, 32) and cls.shape == (2, 1, 32)
    enc = model.apply(variables, jnp.concatenate([cls, tokens], 1), method=ViT.encode)
    _close(enc, model.apply(variables, images)[1]["encoded"])


def test_gap_fc_norm(images):
    model = ViT(**{**TINY, "pool": "gap"})
    variables = model.init(jax.random.key(0), images)
    assert "fc_norm" in variables["params"] and "norm" not in variables["params"]
    out, aux = model.apply(variables, images)
    assert out.shape == (2, 10)
    x = aux["encoded"][:, 1:].mean(1)  # no final norm on tokens: fc_norm on the mean
    ln = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
    p = variables["params"]["fc_norm"]
    _close(aux["pre_logits"], ln * p["scale"] + p["bias"], atol=1e-4)


# --------------------------------------------------------------------------- transforms and dtype

def test_scan_matches_unscanned(tiny, images):
    model, variables = tiny
    ref, aux = model.apply(variables, images)
    stacked = scan_params(variables["params"], TINY["depth"])
    scanned = model.clone(scan=True)
    assert jax.tree.structure(stacked) == jax.tree.structure(
        jax.eval_shape(scanned.init, jax.random.key(0), images)["params"])
    out, aux_s = scanned.apply({"params": stacked}, images)
    _close(out, ref)
    _close(aux_s["encoded"], aux["encoded"])
    back = unscan_params(stacked)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back,
                                     variables["params"]))


def test_remat_same_output_and_grads(tiny, images):
    model, variables = tiny

    @jax.jit
    def value_and_grads(p):
        f = lambda m: jax.value_and_grad(lambda q: m.apply({"params": q}, images)[0].sum())(p)
        return f(model), f(model.clone(remat=True))

    (v_ref, g_ref), (v_rem, g_rem) = value_and_grads(variables["params"])
    _close(v_rem, v_ref)
    jax.tree.map(lambda a, b: _close(a, b, atol=1e-5), g_ref, g_rem)


def test_bf16_compute_fp32_params(tiny, images):
    model, variables = tiny
    half = models.create("vit_tiny_patch16_224", **TINY, dtype="bfloat16")
    params = half.init(jax.random.key(0), images)["params"]
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    out, aux = half.apply(variables, images)
    assert out.dtype == jnp.float32 and aux["encoded"].dtype == jnp.bfloat16
    ref, _ = model.apply(variables, images)
    _close(out, ref, atol=0.05)


def test_drop_path(tiny, images):
    model, variables = tiny
    dp = model.clone(drop_path_rate=0.5, dropout=0.1)
    ref, _ = model.apply(variables, images)
    _close(dp.apply(variables, images, train=False)[0], ref, atol=0)
    rngs = {"dropout": jax.random.key(7)}
    train_out, _ = dp.apply(variables, images, train=True, rngs=rngs)
    assert not np.allclose(train_out, ref)
    # scanned: per-layer rates are traced scalars; runs and is stochastic too.
    stacked = {"params": scan_params(variables["params"], TINY["depth"])}
    s_out, _ = dp.clone(scan=True).apply(stacked, images, train=True, rngs=rngs)
    assert not np.allclose(s_out, ref)


def test_attention_weights_capture(tiny, images):
    model, variables = tiny
    (out, _), state = model.apply(variables, images, mutable=["intermediates"])
    w = state["intermediates"]["blocks_0"]["attn"]["attn_weights"][0]
    assert w.shape == (2, 2, 17, 17)
    _close(w.sum(-1), jnp.ones((2, 2, 17)))
    _close(out, model.apply(variables, images)[0])


# --------------------------------------------------------------------------- registry and errors

def test_registry_generic_names_and_register():
    m = models.create("vit_small_patch8_64", num_classes=0)
    assert (m.width, m.depth, m.num_heads, m.patch_size, m.image_size) == (384, 12, 6, 8, 64)
    assert m.num_classes == 0
    assert "vit_base_patch16_224" in models.list_models("vit_*")
    models.register("test_micro_vit", lambda: ViT(**TINY), overwrite=True)
    assert models.create("test_micro_vit", depth=1).depth == 1


def test_errors(tiny):
    model, variables = tiny
    with pytest.raises(ValueError, match="not divisible by patch size"):
        model.apply(variables, jnp.zeros((1, 18, 18, 3)))
    with pytest.raises(ValueError, match="channels"):
        model.apply(variables, jnp.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="NHWC"):
        model.apply(variables, jnp.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="image_size .* not divisible by patch_size"):
        ViT(**{**TINY, "image_size": 18})
    with pytest.raises(ValueError, match="num_heads"):
        models.create("vit_tiny_patch16_224", num_heads=5)
    with pytest.raises(ValueError, match="vit_small_patch16_224.*list_models"):
        models.create("vit_smal_patch16_224")
    with pytest.raises(ValueError, match="valid fields.*num_classes"):
        models.create("vit_tiny_patch16_224", hiden_size=3)


def test_variant_fields_run(images):
    """CLIP / DINOv2-style switches together: fused qkv, layer scale, norm_pre, no patch bias,
    quick_gelu, no class token with plain average pool, fixed sincos pos-emb."""
    model = ViT(**{**TINY, "fused_qkv": True, "init_values": 0.1, "pre_norm": True,
                   "patch_bias": False, "act": "quick_gelu", "class_token": False, "pool": "gap",
                   "fc_norm": False, "posemb": "sincos2d"})
    variables = model.init(jax.random.key(0), images)
    p = variables["params"]
    assert set(p["blocks_0"]["attn"]) == {"qkv", "out"}
    assert p["blocks_0"]["ls1"]["gamma"].shape == (32,)
    assert "bias" not in p["embedding"] and "norm_pre" in p and "norm" in p
    out, aux = model.apply(variables, images)
    assert out.shape == (2, 10) and aux["encoded"].shape == (2, 16, 32)
    _close(aux["pre_logits"], aux["encoded"].mean(1))


@pytest.mark.parametrize("weight_init", ["mae", "dino"])
def test_posemb_init_std_sets_the_learned_position_embedding_scale(weight_init):
    """posemb_init_std: the learned pos-emb's std at init (0.02 by default, timm's and DINO's); the
    rest of the network's draws are unchanged."""
    kw = dict(num_classes=0, in_channels=1, width=64, depth=1, num_heads=4, mlp_dim=128,
              image_size=28, weight_init=weight_init)
    x = jnp.zeros((1, 28, 28, 1))
    base = models.create("vit_tiny_patch4_28", **kw).init(jax.random.key(0), x)["params"]
    wide = models.create("vit_tiny_patch4_28", posemb_init_std=1.0, **kw).init(jax.random.key(0), x)["params"]
    assert np.asarray(base["pos_embed"]).std() == pytest.approx(0.02, rel=0.1)
    # dino: timm's trunc_normal_(std, a=-2, b=2) cuts at +-2 absolute, +-2 std here: std 0.880
    want = 1.0 if weight_init == "mae" else 0.880
    assert np.asarray(wide["pos_embed"]).std() == pytest.approx(want, rel=0.05)
    np.testing.assert_array_equal(base["blocks_0"]["mlp"]["fc1"]["kernel"], wide["blocks_0"]["mlp"]["fc1"]["kernel"])
