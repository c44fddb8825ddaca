"""Shared layers: the one attention core (fast and explicit paths agree, bias terms, recording
in every family), the NHWC input check, pair, keyword-only sub-modules."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vit_jax import models
from vit_jax.models import layers
from vit_jax.models.cvt import CvtBlock
from vit_jax.models.swin import SwinBlock

X = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))


class _Core(nn.Module):
    """dot_product_attention inside a module (its attention dropout is a sub-module)."""
    n_bias: int = 0
    record: bool = False

    @nn.compact
    def __call__(self, q, k, v, bias=(), train=False):
        rec = layers.attention_recorder(self) if self.record else None
        return layers.dot_product_attention(q, k, v, scale=0.3, bias=bias, dropout=0.5,
                                            deterministic=not train, record=rec)


def _qkv():
    ks = jax.random.split(jax.random.key(0), 3)
    return [jax.random.normal(k, (2, 5, 3, 4)) for k in ks]   # (B, L, H, hd)


def test_dot_product_attention_paths_agree():
    q, k, v = _qkv()
    fast = _Core().apply({}, q, k, v)
    out, state = _Core(record=True).apply({}, q, k, v, mutable=["intermediates"])
    np.testing.assert_allclose(out, fast, atol=1e-6)
    (w,) = state["intermediates"]["attn_weights"]
    assert w.shape == (2, 3, 5, 5) and w.dtype == jnp.float32
    want = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.3, axis=-1)
    np.testing.assert_allclose(w, want, atol=1e-6)
    # nothing is recorded when intermediates are not mutable
    assert _Core(record=True).apply({}, q, k, v).shape == (2, 5, 3, 4)


def test_dot_product_attention_bias_and_dropout():
    q, k, v = _qkv()
    b1 = jax.random.normal(jax.random.key(2), (1, 3, 5, 5))
    b2 = jnp.where(jnp.eye(5, dtype=bool), 0.0, -100.0)[None, None]
    got = _Core().apply({}, q, k, v, (b1, b2))
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.3 + b1 + b2, axis=-1)
    np.testing.assert_allclose(got, jnp.einsum("bhqk,bkhd->bqhd", w, v), atol=1e-6)
    # training: dropout is drawn from the "dropout" rng, so two keys differ
    d1 = _Core().apply({}, q, k, v, train=True, rngs={"dropout": jax.random.key(0)})
    d2 = _Core().apply({}, q, k, v, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(d1, d2)


def _recorded(model, x=X):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.05, s.dtype), variables)
    (out, _), state = model.apply(variables, x, mutable=["intermediates"])
    np.testing.assert_allclose(out, model.apply(variables, x)[0], atol=1e-5)
    # sow stores a tuple per name: one entry (one call) each
    flat = {"/".join(k): v[0] for k, v in traverse_util.flatten_dict(state["intermediates"]).items()}
    for w in flat.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)   # softmax rows
    return {k: v.shape for k, v in flat.items()}


def test_swin_records_attention_weights():
    m = models.create("swin_tiny_patch4_window7_224", patch_size=2, width=8, depths=(2, 1),
                      num_heads=(2, 4), window_size=4, num_classes=0)
    # stage 0: 8x8 grid, 4 windows of 16 tokens; stage 1: 4x4 grid, one window
    assert _recorded(m) == {"layers_0/blocks_0/attn/attn_weights": (8, 2, 16, 16),
                            "layers_0/blocks_1/attn/attn_weights": (8, 2, 16, 16),
                            "layers_1/blocks_0/attn/attn_weights": (2, 4, 16, 16)}


def test_cvt_records_attention_weights():
    m = models.create("cvt_13_224", widths=(8, 16, 24), depths=(1, 1, 1), num_heads=(1, 2, 3),
                      patch_sizes=(3, 3, 3), patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1),
                      num_classes=0)
    # grids 8x8, 4x4, 2x2 (+ class token); keys / values at stride 2
    assert _recorded(m) == {"stage_0_blocks_0/attn/attn_weights": (2, 1, 64, 16),
                            "stage_1_blocks_0/attn/attn_weights": (2, 2, 16, 4),
                            "stage_2_blocks_0/attn/attn_weights": (2, 3, 5, 2)}


def test_check_images_and_pair():
    assert layers.pair(4) == (4, 4) and layers.pair([2, 3]) == (2, 3)
    assert layers.pair(np.int64(5)) == (5, 5)
    assert layers.check_images(X, 3, 4) == (4, 4)
    assert layers.check_images(X, 3) == (16, 16)
    with pytest.raises(ValueError, match="Swin expects NHWC"):
        layers.check_images(X[0], 3, model="Swin")
    with pytest.raises(ValueError, match="3 channels last.*transpose"):
        layers.check_images(X.transpose(0, 3, 1, 2), 3)
    with pytest.raises(ValueError, match="not divisible by patch size 3x2.*multiple of 3x2"):
        layers.check_images(X, 3, (3, 2))
    with pytest.raises(ValueError, match="empty"):
        layers.check_images(jnp.zeros((1, 0, 4, 3)), 3)


def test_sub_modules_are_keyword_only():
    for cls, args in ((CvtBlock, (2,)), (SwinBlock, (2, 7)), (layers.Block, (2, 8)),
                      (layers.Attention, (2,)), (layers.MlpBlock, (8,))):
        with pytest.raises(TypeError):
            cls(*args)
    assert CvtBlock(num_heads=2, class_token=True).class_token
