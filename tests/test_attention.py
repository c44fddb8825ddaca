"""Attention maps (vit_jax/evaluate/attention.py) against transformers' ViT attentions, rollout
against its formula, the picture and the curves."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from vit_jax import convert, viz
from vit_jax.evaluate import attention
from vit_jax.models.vit import ViT, scan_params


@pytest.fixture(scope="module")
def vit():
    model = ViT(num_classes=0, patch_size=4, width=32, depth=3, num_heads=4, mlp_dim=64, image_size=16,
                layer_norm_eps=1e-12)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    variables = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), variables)
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    return model, variables, images


def test_attention_weights_equal_transformers(vit, tmp_path):
    model, variables, images = vit
    convert.save_hf(model, variables, tmp_path / "vit")
    hf = transformers.ViTModel.from_pretrained(tmp_path / "vit", attn_implementation="eager",
                                               add_pooling_layer=False).eval()
    with torch.no_grad():
        want = hf(torch.tensor(images.transpose(0, 3, 1, 2)), output_attentions=True).attentions
    got = attention.attention_weights(model, variables, jnp.asarray(images))
    assert len(got) == 3 and got[0].shape == (2, 4, 17, 17)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)
    # the scanned layout gives the same maps
    scanned = model.clone(scan=True)
    sv = {"params": scan_params(variables["params"], 3)}
    for g, s in zip(got, attention.attention_weights(scanned, sv, jnp.asarray(images))):
        np.testing.assert_allclose(s, g, atol=1e-6)


def test_cls_attention_and_rollout(vit):
    model, variables, images = vit
    w = attention.attention_weights(model, variables, jnp.asarray(images))
    maps = attention.cls_attention(w[-1], model)
    assert maps.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(maps.reshape(2, 4, 16), w[-1][:, :, 0, 1:], atol=0)
    roll = attention.attention_rollout(w, model)
    # the formula, written out
    joint = np.eye(17)[None].repeat(2, 0)
    for a in w:
        a = 0.5 * a.mean(1) + 0.5 * np.eye(17)
        a = a / a.sum(-1, keepdims=True)
        joint = a @ joint
    np.testing.assert_allclose(roll, joint[:, 0, 1:].reshape(2, 4, 4), rtol=1e-5)
    pic = viz.attention_picture(images, maps, 0.0, 1.0)
    assert pic.dtype == np.uint8 and pic.shape[1] == 5 * pic.shape[0] // 2


def test_curves_figure(tmp_path):
    rows = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 6)] + [{"step": 5, "eval/test/accuracy": 0.9}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fig = viz.curves_figure(str(tmp_path))
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="none of the metrics"):
        viz.curves_figure(str(tmp_path), keys=("eval/x",))
