"""CCT / ViT-Lite / CVT (vit_jax/models/cct.py): exact parameter counts, token shapes, the init,
and the forward pass against a PyTorch re-statement of the paper's equations written here
(Hugging Face has no CCT; no network in CI), with wrongly ordered variants it must catch."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_jax import models
from vit_jax.models.cct import CCT, sine_posemb

ATOL = 1e-4

# Tiny configs on non-square images (16 x 12: a swapped h / w changes the result).
TINY = {
    # CCT: 2 conv layers (8 hidden channels), learned pos-emb, SeqPool -> 4x3 = 12 tokens
    "cct": dict(num_classes=5, image_size=(16, 12), width=32, depth=2, num_heads=2,
                mlp_ratio=2.0, n_conv_layers=2, conv_channels=8, posemb="learn", pool="seq"),
    # ViT-Lite: 4x4 patches with bias, class token, sine pos-emb -> 1 + 12 tokens
    "vit_lite": dict(num_classes=5, image_size=(16, 12), width=32, depth=2, num_heads=2,
                     mlp_ratio=1.0, tokenizer="patch", patch_size=4, posemb="sine", pool="token"),
}


# ----------------------------------------------------------------------------- counts and shapes

@pytest.mark.parametrize("name,expected", [
    ("cct_7_3x1_32", 3_760_139),
    ("cct_7_3x1_32_sine", 3_694_603),    # the sine table is a constant, not a parameter
    ("cct_2_3x2_32", 283_723),
    ("vit_lite_7_4_32", 3_716_874),
    # CVT-7/4 = ViT-Lite-7/4 less the class token and its pos-emb row (2 x 256), plus SeqPool's
    # Dense(256 -> 1) (257)
    ("vit_lite_seqpool_7_4_32", 3_716_874 - 2 * 256 + 257),
])
def test_param_counts(name, expected):
    assert models.param_count(models.create(name), (32, 32, 3)) == expected


def _shapes(model: CCT, hw: tuple[int, int], batch: int = 2, **kw):
    """((out, aux), variables) as ShapeDtypeStructs: traced, never compiled or allocated."""
    x = jax.ShapeDtypeStruct((batch, *hw, model.in_channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, **kw), x)


@pytest.mark.parametrize("name,hw,grid,tokens,width", [
    ("cct_7_3x1_32", (32, 32), (16, 16), 256, 256),
    ("cct_2_3x2_32", (32, 32), (8, 8), 64, 128),
    ("cct_7_3x1_32", (28, 28), (14, 14), 196, 256),         # mnist: the pos-emb is resized
    ("cct_14_7x2_224", (224, 224), (14, 14), 196, 384),     # k=7: stride 2, padding 3
    ("vit_lite_7_4_32", (32, 32), (8, 8), 65, 256),          # class token first
    ("vit_lite_seqpool_7_4_32", (32, 32), (8, 8), 64, 256),
])
def test_token_shapes(name, hw, grid, tokens, width):
    model = models.create(name)
    assert model.token_grid(*hw) == grid
    (out, aux), variables = _shapes(model, hw)
    assert out.shape == (2, model.num_classes) and out.dtype == jnp.float32
    assert aux["encoded"].shape == (2, tokens, width)
    assert aux["pre_logits"].shape == (2, width)
    assert ("pool_weights" in aux) == (model.pool == "seq")
    if model.pool == "seq":
        assert aux["pool_weights"].shape == (2, tokens)
    raw = jax.eval_shape(lambda v, x: model.apply(v, x, method=CCT.tokenize)[0], variables,
                         jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32))
    assert raw.shape == (2, grid[0] * grid[1], width)


def test_features_other_sizes_and_attention_maps():
    model = CCT(**TINY["cct"])
    (out, aux), _ = _shapes(model.clone(num_classes=0), (20, 16))
    assert out.shape == (2, 32) and aux["encoded"].shape == (2, 5 * 4, 32)
    (out, aux), _ = _shapes(CCT(**TINY["vit_lite"]), (20, 16))     # sine table recomputed
    assert aux["encoded"].shape == (2, 1 + 5 * 4, 32)
    _, variables = _shapes(model, (16, 12))
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables,
                              jax.ShapeDtypeStruct((2, 16, 12, 3), jnp.float32))
    assert state["intermediates"]["blocks_1"]["attn"]["attn_weights"][0].shape == (2, 2, 12, 12)


# ----------------------------------------------------------------------------- init

def test_init_follows_the_reference():
    p = models.create("cct_7_3x1_32", depth=1).init(jax.random.key(0),
                                                    jnp.zeros((1, 32, 32, 3)))["params"]
    conv = p["embedding"]["conv_0"]
    assert set(conv) == {"kernel"}                                  # no bias
    w = np.asarray(conv["kernel"])                                  # (3, 3, 3, 256), fan_in 27
    std = math.sqrt(2 / 27)                                         # kaiming_normal_, gain sqrt 2
    assert abs(w.std() / std - 1) < 0.05
    assert np.abs(w).max() / std > 3              # untruncated (flax's he_normal stops at ~2.3)
    assert abs(np.asarray(p["pos_embed"]).std() / 0.2 - 1) < 0.03  # trunc-normal std 0.2
    for kernel in (p["blocks_0"]["attn"]["qkv"]["kernel"], p["blocks_0"]["mlp"]["fc1"]["kernel"],
                   p["head"]["kernel"]):
        assert abs(np.asarray(kernel).std() / 0.02 - 1) < 0.05
    for bias in (p["blocks_0"]["attn"]["out"]["bias"], p["blocks_0"]["mlp"]["fc2"]["bias"],
                 p["attention_pool"]["bias"], p["head"]["bias"], p["norm"]["bias"]):
        assert not np.asarray(bias).any()
    assert (np.asarray(p["blocks_0"]["norm2"]["scale"]) == 1).all()
    assert "qkv" in p["blocks_0"]["attn"] and "bias" not in p["blocks_0"]["attn"]["qkv"]

    p = models.create("vit_lite_7_4_32", depth=1).init(jax.random.key(0),
                                                       jnp.zeros((1, 32, 32, 3)))["params"]
    assert not np.asarray(p["cls_token"]).any()                     # the reference's zeros
    b = np.asarray(p["embedding"]["conv_0"]["bias"])                # torch default U(+-1/sqrt 48)
    assert np.abs(b).max() <= 48 ** -0.5 and b.std() > 0.5 * 48 ** -0.5 / math.sqrt(3)
    assert abs(np.asarray(p["embedding"]["conv_0"]["kernel"]).std() / math.sqrt(2 / 48) - 1) < 0.05


# ----------------------------------------------------------------------------- PyTorch re-statement

def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def _sine_table(n: int, d: int) -> torch.Tensor:
    """The paper's sinusoidal embedding: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(.)."""
    p = torch.arange(n, dtype=torch.float64)[:, None]
    ang = p / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(ang), torch.cos(ang[:, : d // 2])
    return pe.float()[None]


def torch_forward(p: dict, images: np.ndarray, cfg: dict, variant: str | None = None):
    """CCT / ViT-Lite from the paper's equations in torch, on our parameters.

    Returns (logits, encoded tokens, SeqPool weights or None).  `variant` breaks one piece on
    purpose: "pre_norm" (x + MLP(LN x) instead of LN on the stream), "mean_pool" (instead of
    SeqPool), "column_major" (tokens flattened column-first).
    """
    conv = cfg.get("tokenizer", "conv") == "conv"
    x = _t(images).permute(0, 3, 1, 2)                                   # NCHW
    for i in range(cfg["n_conv_layers"] if conv else 1):
        c = p["embedding"][f"conv_{i}"]
        weight = _t(c["kernel"]).permute(3, 2, 0, 1)             # (k,k,in,out) -> (out,in,k,k)
        bias = _t(c["bias"]) if "bias" in c else None
        if conv:   # x_0 = MaxPool(ReLU(Conv2d(x))); k = 3: stride 1, padding 1
            x = F.max_pool2d(F.relu(F.conv2d(x, weight, bias, stride=1, padding=1)), 3, 2, 1)
        else:      # patches: a p x p conv with stride p
            x = F.conv2d(x, weight, bias, stride=cfg["patch_size"])
    if variant == "column_major":
        x = x.transpose(2, 3)
    x = x.flatten(2).transpose(1, 2)                                     # (B, h*w, D) row-major
    b, _, d = x.shape
    if cfg["pool"] == "token":
        x = torch.cat([_t(p["cls_token"]).expand(b, 1, d), x], dim=1)
    x = x + (_t(p["pos_embed"]) if cfg["posemb"] == "learn" else _sine_table(x.shape[1], d))

    def lin(z, q):
        return z @ _t(q["kernel"]) + (_t(q["bias"]) if "bias" in q else 0)

    def ln(z, q):
        return F.layer_norm(z, (d,), _t(q["scale"]), _t(q["bias"]), eps=1e-5)

    heads = cfg["num_heads"]
    for j in range(cfg["depth"]):
        q = p[f"blocks_{j}"]
        n = x.shape[1]
        qkv = lin(ln(x, q["norm1"]), q["attn"]["qkv"]).reshape(b, n, 3, heads, d // heads)
        qq, kk, vv = qkv.permute(2, 0, 3, 1, 4)                          # (B, H, N, hd) each
        attn = torch.softmax(qq @ kk.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
        x = x + lin((attn @ vv).transpose(1, 2).reshape(b, n, d), q["attn"]["out"])

        def mlp(z, q=q):
            return lin(F.gelu(lin(z, q["mlp"]["fc1"])), q["mlp"]["fc2"])

        if variant == "pre_norm":
            x = x + mlp(ln(x, q["norm2"]))
        else:      # the reference: the stream itself is normalised, then x + MLP(x)
            x = ln(x, q["norm2"])
            x = x + mlp(x)
    x = ln(x, p["norm"])
    weights = None
    if cfg["pool"] == "token":
        z = x[:, 0]
    elif variant == "mean_pool":
        z = x.mean(dim=1)
    else:          # SeqPool: z = softmax(g(x_L)^T) x_L
        weights = torch.softmax(lin(x, p["attention_pool"]), dim=1)     # (B, N, 1)
        z = (weights.transpose(-1, -2) @ x).squeeze(-2)
        weights = weights[..., 0]
    return lin(z, p["head"]), x, weights


def _randomise(params, seed: int):
    """Every parameter drawn at a scale that makes each piece matter (LayerNorm scale 1 +- 0.3,
    biases 0.3, kernels 1/sqrt(fan_in), tokens 0.5): a swapped or misplaced piece then changes
    the logits by far more than the tolerance."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        z = rng.standard_normal(shape)
        if name == "scale":
            z = 1 + 0.3 * z
        elif name == "bias":
            z = 0.3 * z
        elif name == "kernel":
            z = z / math.sqrt(np.prod(shape[:-1]))
        else:
            z = 0.5 * z
        return jnp.asarray(z, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, params)


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
    """(config, params, images, jitted outputs (logits, aux, tokenizer output)) once per config."""
    cfg = TINY[request.param]
    model = CCT(**cfg)
    _, variables = _shapes(model, (16, 12), batch=1)
    params = _randomise(variables["params"], seed=1)
    images = np.random.default_rng(2).standard_normal((3, 16, 12, 3)).astype(np.float32)
    out, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images)
    return dict(name=request.param, cfg=cfg, model=model, params=params, images=images,
                out=np.asarray(out), aux=jax.device_get(aux))


def test_matches_torch_restatement(tiny):
    logits, encoded, weights = torch_forward(tiny["params"], tiny["images"], tiny["cfg"])
    assert logits.std() > 0.3                        # so that the tolerance means something
    np.testing.assert_allclose(tiny["out"], logits.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(tiny["aux"]["encoded"], encoded.numpy(), atol=ATOL, rtol=0)
    if weights is not None:
        np.testing.assert_allclose(tiny["aux"]["pool_weights"], weights.numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(tiny["aux"]["pool_weights"].sum(1), 1.0, atol=1e-6)
        assert tiny["aux"]["pool_weights"].std() > 1e-2               # not a uniform mean


def test_tokenizer_matches_torch(tiny):
    """The tokenizer alone (conv, ReLU, max-pool, row-major flatten), before any pos-emb."""
    model, cfg, images = tiny["model"], tiny["cfg"], tiny["images"]
    raw, grid = model.apply({"params": tiny["params"]}, images, method=CCT.tokenize)
    x = _t(images).permute(0, 3, 1, 2)
    for i in range(cfg.get("n_conv_layers", 1)):
        c = tiny["params"]["embedding"][f"conv_{i}"]
        w, b = _t(c["kernel"]).permute(3, 2, 0, 1), _t(c["bias"]) if "bias" in c else None
        if tiny["name"] == "cct":
            x = F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 3, 2, 1)
        else:
            x = F.conv2d(x, w, b, stride=4)
    assert tuple(x.shape[2:]) == grid == (4, 3)
    np.testing.assert_allclose(raw, x.flatten(2).transpose(1, 2).numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("tiny,variant", [
    ("cct", "pre_norm"), ("cct", "mean_pool"), ("cct", "column_major"),
    ("vit_lite", "pre_norm"), ("vit_lite", "column_major"),
], indirect=["tiny"])
def test_restatement_catches_a_wrong_order(tiny, variant):
    """Each order-sensitive piece moves the logits by far more than the tolerance, so the match
    above pins the reference's block norm order, SeqPool and the token order."""
    wrong, _, _ = torch_forward(tiny["params"], tiny["images"], tiny["cfg"], variant)
    assert np.abs(tiny["out"] - wrong.numpy()).max() > 100 * ATOL


def test_sine_table_is_the_papers():
    ours = sine_posemb(257, 256)
    np.testing.assert_allclose(ours, _sine_table(257, 256).numpy(), atol=1e-4, rtol=0)
    halves = torch.cat([_sine_table(257, 256)[..., 0::2], _sine_table(257, 256)[..., 1::2]], -1)
    assert np.abs(ours - halves.numpy()).max() > 0.5                # interleaved, not [sin | cos]
    assert ours[0, 0, 0] == 0 and ours[0, 0, 1] == 1


def test_train_mode_is_stochastic(tiny):
    model = tiny["model"].clone(dropout=0.1, drop_path_rate=0.5)
    f = jax.jit(lambda p, x, k: model.apply({"params": p}, x, train=True, rngs={"dropout": k})[0])
    a, b = (np.asarray(f(tiny["params"], tiny["images"], jax.random.key(s))) for s in (1, 2))
    assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-3


# ----------------------------------------------------------------------------- registry and errors

def test_registry():
    assert {"cct_7_3x1_32", "cct_7_3x1_32_sine", "cct_2_3x2_32"} <= set(models.list_models("cct_*"))
    assert {"vit_lite_7_4_32", "vit_lite_seqpool_7_4_32"} <= set(models.list_models("vit_lite_*"))
    assert not set(models.list_models("cvt_*")) & set(models.list_models("vit_lite_*"))
    m = models.create("cct_7_3x1_32", num_classes=100, image_size=28, in_channels=1)
    assert (m.num_classes, m.depth, m.width, m.num_heads, m.mlp_ratio) == (100, 7, 256, 4, 2.0)
    assert (m.attn_dropout, m.drop_path_rate, m.dropout, m.qkv_bias) == (0.1, 0.1, 0.0, False)
    m = models.create("cct_6_3x2_32_sine")                            # generic names
    assert (m.depth, m.width, m.n_conv_layers, m.posemb, m.num_classes) == (6, 256, 2, "sine", 10)
    m = models.create("cct_14_7x2_224")
    assert (m.num_classes, m._conv, m.base_grid) == (1000, (7, 2, 3), (14, 14))
    m = models.create("vit_lite_seqpool_2_4_32_sine")
    assert (m.tokenizer, m.pool, m.posemb, m.width) == ("patch", "seq", "sine", 128)
    with pytest.raises(ValueError, match=r"cct_\{depth\}_\{k\}x\{n\}_\{img\}"):
        models.create("cct_3_3x1_32")


def _init(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def test_errors():
    cct = models.create("cct_7_3x1_32")
    with pytest.raises(ValueError, match="3 channels last"):
        _init(cct, (1, 32, 32, 1))
    with pytest.raises(ValueError, match="NHWC"):
        _init(cct, (32, 32, 3))
    with pytest.raises(ValueError, match="images 30x32 is not divisible by the patch size 4"):
        _init(models.create("vit_lite_7_4_32"), (1, 30, 32, 3))
    with pytest.raises(ValueError, match="image_size 30x30 is not divisible by the patch size 4"):
        models.create("vit_lite_7_4_32", image_size=30)
    # a tokenizer that does not fit: at create (image_size), and at apply (the images)
    with pytest.raises(ValueError, match="does not fit image_size 4x4: the conv of conv layer 0"):
        models.create("cct_7_3x1_32", conv_kernel=7, conv_padding=0, image_size=4)
    unpadded = models.create("cct_2_3x2_32", maxpool_padding=0)       # fits 32 px: 7x7 tokens
    with pytest.raises(ValueError, match="does not fit images 4x4: the max-pool of conv layer 1"):
        _init(unpadded, (1, 4, 4, 3))
    for field, bad in (("posemb", "learnable"), ("pool", "cls"), ("tokenizer", "linear")):
        with pytest.raises(ValueError, match=f"{field} must be one of"):
            models.create("cct_2_3x2_32", **{field: bad})
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        models.create("cct_2_3x2_32", num_heads=3)
    with pytest.raises(ValueError, match="maxpool_padding 2"):
        models.create("cct_2_3x2_32", maxpool_padding=2)
