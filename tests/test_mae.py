"""MAE objective: closed forms, patchify/masking facts, the call contract, pictures (HF parity: test_mae_hf.py)."""
from __future__ import annotations

import math
import os

import einops
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from vit_jax import objectives, viz
from vit_jax.config_base import base_config
from vit_jax.data.info import DataInfo
from vit_jax.models import mae
from vit_jax.models.vit import ViT
from vit_jax.objectives import mae as mae_objective

# Tiny: 32x32 images, patch 8 -> 16 patches, 4 visible at mask ratio 0.75.
TINY_ENCODER = dict(num_classes=0, posemb="sincos2d", patch_size=8, width=32, depth=2,
                    num_heads=4, mlp_dim=64, image_size=32)
TINY_DECODER = dict(decoder_width=16, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=32)


def tiny_mae(**kw) -> mae.MAE:
    enc = dict(TINY_ENCODER, **kw.pop("encoder", {}))
    return mae.MAE(encoder=ViT(**enc), **dict(TINY_DECODER, **kw))


def _close(a, b, atol=1e-5, rtol=0.0):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny() -> tuple[mae.MAE, dict]:
    model = tiny_mae()
    # rbg keys: XLA:CPU compiles this init about twice as fast as with threefry.
    key = lambda s: jax.random.key(s, impl="rbg")  # noqa: E731
    variables = jax.jit(model.init)({"params": key(0), "masking": key(1)}, jnp.zeros((1, 32, 32, 3)))
    return model, variables


# --------------------------------------------------------------------------- closed-form losses

@pytest.mark.parametrize("p,c", [(16, 3), (8, 1), (4, 3)])
def test_norm_pix_zero_prediction_is_n_minus_1_over_n(p, c):
    # With the UNBIASED variance, sum((t-m)^2)/var = n-1, so predicting 0 gives (n-1)/n (x var/(var+eps)).
    n = p * p * c
    target = jax.random.normal(jax.random.key(0), (2, 5, n)) * 3.0 + 1.0
    mask = jnp.ones((2, 5))
    loss = mae.masked_pixel_loss(jnp.zeros_like(target), target, mask, norm_pix_loss=True)
    _close(loss, (n - 1) / n, atol=2e-6)
    if (p, c) == (16, 3):
        _close(loss, 767 / 768, atol=2e-6)
        assert abs(float(loss) - 1.0) > 1e-3  # 1.0 would mean ddof=0


def test_plain_loss_is_mean_square_over_masked_patches():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(2, 6, 12)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 1]], np.float32)
    loss = mae.masked_pixel_loss(jnp.zeros_like(target), target, mask, norm_pix_loss=False)
    _close(loss, np.mean(target[mask > 0] ** 2), atol=1e-6)
    per = mae.per_example_masked_loss(jnp.zeros_like(target), target, mask)
    _close(per, [np.mean(target[i][mask[i] > 0] ** 2) for i in range(2)], atol=1e-6)
    # Unmasked patches do not count at all.
    pred = np.where(mask[..., None] > 0, 0.0, 1e3).astype(np.float32)
    _close(mae.masked_pixel_loss(pred, target, mask), loss, atol=1e-6)


# --------------------------------------------------------------------------- patchify

def test_patchify_order_and_round_trip():
    x = np.random.default_rng(2).normal(size=(2, 12, 8, 3)).astype(np.float32)
    patches = np.asarray(mae.patchify(x, 4))
    expected = einops.rearrange(x, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=4, p2=4)
    np.testing.assert_array_equal(patches, expected)
    # One element by hand: patch (i, j), row r, column s, channel ch.
    i, j, r, s, ch = 2, 1, 3, 2, 1
    assert patches[1, i * 2 + j, (r * 4 + s) * 3 + ch] == x[1, i * 4 + r, j * 4 + s, ch]
    np.testing.assert_array_equal(np.asarray(mae.unpatchify(mae.patchify(x, 4), 4, (3, 2), 3)), x)
    # Rectangular patches and numpy input work too.
    rect = mae.patchify(x, (6, 4))
    np.testing.assert_array_equal(
        rect, einops.rearrange(x, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=6, p2=4))
    with pytest.raises(ValueError, match="not divisible by patch size"):
        mae.patchify(x, 5)


# --------------------------------------------------------------------------- masking

@pytest.mark.parametrize("length,ratio", [(16, 0.75), (196, 0.75), (10, 0.6), (5, 0.0)])
def test_random_masking_facts(length, ratio):
    b, d = 3, 4
    x = jax.random.normal(jax.random.key(0), (b, length, d))
    noise = jax.random.uniform(jax.random.key(1), (b, length))
    visible, mask, ids_restore = mae.random_masking(x, noise, ratio)
    keep = int(length * (1 - ratio))  # int(10 * 0.4) == 3: the float expression matters
    assert visible.shape == (b, keep, d) and mask.shape == (b, length)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), length - keep)
    ids_shuffle = np.argsort(np.asarray(noise), axis=1, kind="stable")
    np.testing.assert_array_equal(np.asarray(ids_restore), np.argsort(ids_shuffle, axis=1))
    np.testing.assert_array_equal(np.take_along_axis(ids_shuffle, np.asarray(ids_restore), 1),
                                  np.tile(np.arange(length), (b, 1)))
    # The kept patches are the `keep` smallest noises, in ascending-noise order.
    _close(visible, np.take_along_axis(np.asarray(x), ids_shuffle[:, :keep, None], 1), atol=0)
    ref_mask = np.ones((b, length))
    np.put_along_axis(ref_mask, ids_shuffle[:, :keep], 0.0, 1)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    # Same noise, same mask.
    np.testing.assert_array_equal(np.asarray(mae.random_masking(x, noise, ratio)[1]), np.asarray(mask))


def test_random_masking_errors():
    x = jnp.zeros((1, 16, 4))
    noise = jnp.zeros((1, 16))
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
            mae.random_masking(x, noise, bad)
    with pytest.raises(ValueError, match="encoder would see nothing"):
        mae.random_masking(x, noise, 0.95)  # int(16 * 0.05) == 0
    with pytest.raises(ValueError, match="noise has shape"):
        mae.random_masking(x, jnp.zeros((1, 15)), 0.75)


# --------------------------------------------------------------------------- the module

def test_call_contract(tiny, images):
    model, variables = tiny
    noise = jax.random.uniform(jax.random.key(2), (3, 16))
    out = jax.jit(lambda v, x, n: model.apply(v, x, noise=n))(variables, images, noise)
    assert set(out) == {"loss", "pred", "mask", "ids_restore"}
    assert out["loss"].shape == () and np.isfinite(out["loss"])
    assert out["pred"].shape == (3, 16, 8 * 8 * 3) and out["pred"].dtype == jnp.float32
    assert out["mask"].shape == (3, 16) and out["ids_restore"].shape == (3, 16)
    np.testing.assert_array_equal(np.asarray(out["mask"]).sum(1), 12)
    np.testing.assert_array_equal(np.sort(np.asarray(out["ids_restore"]), 1),
                                  np.tile(np.arange(16), (3, 1)))
    _, ref_mask, _ = mae.random_masking(jnp.zeros((3, 16, 1)), noise, 0.75)
    np.testing.assert_array_equal(out["mask"], ref_mask)
    _close(out["loss"], mae.masked_pixel_loss(out["pred"], mae.patchify(images, 8), out["mask"]),
           atol=1e-6)
    # noise=None draws from the "masking" rng: deterministic per key, different across keys.
    masks = jax.jit(lambda v, x, k: model.apply(v, x, rngs={"masking": k})["mask"])
    m1, m2, m3 = (masks(variables, images, jax.random.key(k)) for k in (5, 5, 6))
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, m3)


def test_param_tree_names_and_init(tiny):
    _, variables = tiny
    assert set(variables) == {"params"}
    p = variables["params"]
    assert set(p) == {"encoder", "decoder_embed", "mask_token", "decoder_blocks_0",
                      "decoder_norm", "decoder_pred"}
    assert set(p["encoder"]) == {"embedding", "cls_token", "blocks_0", "blocks_1", "norm"}
    assert set(p["decoder_blocks_0"]) == set(p["encoder"]["blocks_0"])
    assert p["decoder_embed"]["kernel"].shape == (32, 16)
    assert p["mask_token"].shape == (1, 1, 16)
    assert p["decoder_pred"]["kernel"].shape == (16, 192)
    assert float(jnp.abs(p["decoder_pred"]["bias"]).max()) == 0.0
    # xavier_uniform for Dense: |w| <= sqrt(6 / (fan_in + fan_out)).
    assert float(jnp.abs(p["decoder_pred"]["kernel"]).max()) <= math.sqrt(6 / (16 + 192))
    # mae_qkv_init: separate q/k/v kernels drawn like slices of MAE's fused Linear(D, 3D).
    fixed = mae.mae_qkv_init(p)
    q = fixed["encoder"]["blocks_0"]["attn"]["query"]["kernel"]
    assert float(jnp.abs(q).max()) <= math.sqrt(6 / (32 + 96)) < float(
        jnp.abs(p["encoder"]["blocks_0"]["attn"]["query"]["kernel"]).max())
    _close(fixed["encoder"]["blocks_0"]["attn"]["out"]["kernel"],
           p["encoder"]["blocks_0"]["attn"]["out"]["kernel"], atol=0)
    # mae_init: that, and the patch conv's bias at torch's Conv2d default, U(+-1/sqrt(p*p*C))
    full = mae.mae_init(p, jax.random.PRNGKey(1))
    _close(full["encoder"]["blocks_0"]["attn"]["query"]["kernel"], q, atol=0)
    bias, zero = full["encoder"]["embedding"]["bias"], p["encoder"]["embedding"]["bias"]
    fan_in = int(np.prod(p["encoder"]["embedding"]["kernel"].shape[:-1]))
    assert float(jnp.abs(zero).max()) == 0.0 and bias.shape == zero.shape
    assert 0.5 / math.sqrt(fan_in) < float(jnp.abs(bias).max()) <= 1 / math.sqrt(fan_in)


def test_mae_vit_base_param_count():
    model = mae.build_mae("vit_base_patch16_224")
    shapes = jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0), "masking": jax.random.key(1)}, jnp.zeros((1, 224, 224, 3))))
    count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))  # noqa: E731
    params = shapes["params"]
    assert set(shapes) == {"params"}  # the sincos pos-embs are constants
    assert count(params["encoder"]) == 85_647_360
    assert count(params) - count(params["encoder"]) == 26_008_320
    assert count(params) == 111_655_680


def test_module_errors(images):
    with pytest.raises(ValueError, match="num_classes=0"):
        tiny_mae(encoder=dict(num_classes=10))
    with pytest.raises(ValueError, match="sincos2d"):
        tiny_mae(encoder=dict(posemb="learn"))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="encoder would see nothing"):
        tiny_mae(mask_ratio=0.95)
    with pytest.raises(ValueError, match="decoder_heads"):
        tiny_mae(decoder_heads=3)
    with pytest.raises(ValueError, match="must be >= 1"):
        tiny_mae(decoder_heads=0)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        tiny_mae(encoder=dict(image_size=30))
    model = tiny_mae()
    rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
    with pytest.raises(ValueError, match="not divisible by patch size"):
        jax.eval_shape(lambda: model.init(rngs, jnp.zeros((1, 30, 30, 3))))
    with pytest.raises(ValueError, match="noise has shape"):
        jax.eval_shape(lambda: model.init(rngs, jnp.zeros((2, 32, 32, 3)), noise=jnp.zeros((2, 9))))


# --------------------------------------------------------------------------- the objective

def tiny_config(**mae_kw) -> mlc.ConfigDict:
    c = base_config()
    c.objective = "mae"
    c.model_name = "vit_tiny_patch8_32"
    c.model = mlc.ConfigDict(dict(width=32, depth=2, num_heads=4, mlp_dim=64))  # = TINY_ENCODER
    c.mae = objectives.default_config("mae")
    c.mae.update(dict(dict(decoder_width=16, decoder_depth=1, decoder_heads=2, decoder_mlp_ratio=2.0),
                      **mae_kw))
    c.data.eval_transform = "normalize('imagenet')"
    return c


INFO = DataInfo(num_classes=10, image_shape=(32, 32, 3), num_train=100)


def test_default_config_values():
    assert objectives.default_config("mae").to_dict() == dict(
        mask_ratio=0.75, decoder_width=512, decoder_depth=8, decoder_heads=16,
        decoder_mlp_ratio=4.0, norm_pix_loss=False)


def test_objective_end_to_end(tiny, images, tmp_path):
    obj = objectives.build(tiny_config(norm_pix_loss=True), INFO)
    assert isinstance(obj, mae_objective.MAEObjective) and "mae" in objectives.names()
    batch = {"image": jnp.asarray(images), "label": jnp.zeros((3,), jnp.int32),
             "mask": jnp.array([1.0, 1.0, 0.0])}
    shapes, extra = jax.eval_shape(obj.init, jax.random.key(0), {"image": batch["image"][:1]})
    assert extra == {} and obj.model.norm_pix_loss and obj.model.mask_ratio == 0.75
    # The config builds the `tiny` module: reuse its params (XLA:CPU compiles an init slowly).
    params = mae.mae_qkv_init(tiny[1]["params"])
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda p: p.shape, params)

    grad_fn = jax.jit(jax.value_and_grad(lambda p, r: obj.loss(p, extra, batch, r, 0), has_aux=True))
    (loss, (metrics, _)), grads = grad_fn(params, jax.random.key(1))
    assert np.isfinite(loss) and set(metrics) == {"loss"} and metrics["loss"] == loss
    assert float(jnp.abs(grads["mask_token"]).sum()) > 0
    assert float(jnp.abs(grads["encoder"]["cls_token"]).sum()) > 0

    ev = jax.jit(obj.eval_metrics)
    e1, e2 = ev(params, extra, batch), ev(params, extra, batch)
    assert e1["loss"].shape == (3,)
    np.testing.assert_array_equal(e1["loss"], e2["loss"])  # fixed eval noise

    feats, aux = jax.eval_shape(obj.backbone.apply, obj.backbone_variables(params, extra),
                                batch["image"])   # the encoder's tree is a whole ViT's
    assert feats.shape == (3, 32) and aux["encoded"].shape == (3, 17, 32)

    path = viz.save_png(obj.reconstruction_image(params, extra, np.asarray(batch["image"])[:2]),
                        os.path.join(str(tmp_path), "mae_reconstruction_000007.png"))
    from PIL import Image
    assert Image.open(path).size == (3 * 32 * 3, 2 * 32 * 3)  # 2 rows, scale 3


def test_objective_config_errors():
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        mae_objective.MAEObjective(tiny_config(mask_ratio=1.0), INFO)
    with pytest.raises(ValueError, match="conflicts with MAE"):
        c = tiny_config()
        c.model.posemb = "learn"
        mae_objective.MAEObjective(c, INFO)
    c = tiny_config()
    c.mae.decoder_blocks = 3
    with pytest.raises(ValueError, match="unknown key"):
        mae_objective.MAEObjective(c, INFO)
    c = tiny_config()
    c.mae.decoder_mlp_ratio = 0.0
    with pytest.raises(ValueError, match="decoder_mlp_ratio"):
        mae_objective.MAEObjective(c, INFO)


# --------------------------------------------------------------------------- pictures

@pytest.mark.parametrize("channels", [3, 1])
def test_mae_grid(channels):
    rng = np.random.default_rng(4)
    b, p, mean, std = 2, 4, [0.5] * channels, [0.25] * channels
    x01 = rng.uniform(size=(b, 12, 8, channels)).astype(np.float32)  # display units [0, 1]
    images = (x01 - 0.5) / 0.25
    mask = (rng.uniform(size=(b, 6)) < 0.5).astype(np.float32)
    mask[:, 0], mask[:, 1] = 1.0, 0.0
    pred = rng.normal(size=(b, 6, p * p * channels)).astype(np.float32)
    grid = viz.mae_grid(images, pred, mask, p, mean, std, scale=2)
    assert grid.dtype == np.uint8 and grid.shape == (b * 24, 3 * 16, 3)
    panels = grid[::2, ::2].reshape(b, 12, 3, 8, 3)                    # undo the upscaling
    original, masked, recon = panels[:, :, 0], panels[:, :, 1], panels[:, :, 2]
    expect = np.round(np.repeat(x01, 3 // channels, axis=-1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(original, expect)
    pix_mask = np.asarray(mae.unpatchify(np.repeat(mask[..., None], p * p * channels, -1), p, (3, 2),
                                         channels))[..., :1] > 0
    pix_mask = np.broadcast_to(pix_mask, original.shape)
    np.testing.assert_array_equal(recon[~pix_mask], original[~pix_mask])   # visible: pasted
    np.testing.assert_array_equal(masked[~pix_mask], original[~pix_mask])
    assert np.all(masked[pix_mask] == 128)                                  # masked: gray
    assert not np.array_equal(recon[pix_mask], original[pix_mask])          # masked: predicted


def test_mae_grid_norm_pix_inverts_target_normalisation(tmp_path):
    rng = np.random.default_rng(5)
    x01 = rng.uniform(0.2, 0.8, size=(1, 28, 28, 1)).astype(np.float32)   # an MNIST-sized digit
    images = (x01 - 0.1307) / 0.3081
    target = mae.patchify(images, 7)
    pred = np.asarray(mae.normalize_patches(target))   # the perfect norm_pix prediction
    mask = np.ones((1, 16), np.float32)
    grid = viz.mae_grid(images, pred, mask, 7, (0.1307,), (0.3081,), norm_pix_loss=True)
    assert grid.shape == (4 * 28, 3 * 4 * 28, 3)   # 28 -> 112 (nearest, scale 4)
    recon, original = grid[::4, 2 * 28 * 4::4], grid[::4, :28 * 4:4]
    assert np.abs(recon.astype(int) - original.astype(int)).max() <= 1
    path = viz.save_png(grid, str(tmp_path / "sub" / "g.png"))
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
