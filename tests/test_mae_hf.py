"""MAE (vit_jax/models/mae.py) against Hugging Face's ViTMAEForPreTraining with the same weights:
the sincos layout, masks, predictions and loss, with and without norm_pix_loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import transformers.models.vit_mae.modeling_vit_mae as hf_vit_mae

from vit_jax.models import mae
from vit_jax.models.posemb import sincos_2d
from vit_jax.models.vit import ViT


def _hf_mae(norm_pix_loss: bool):
    cfg = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, image_size=32, patch_size=8, num_channels=3,
        norm_pix_loss=norm_pix_loss, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True,
        mask_ratio=0.75)
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(cfg).eval()
    with torch.no_grad():
        # Random values everywhere (HF's init leaves LN at 1/0, biases and tokens at 0) ...
        for name, t in model.named_parameters():
            t.copy_(torch.randn_like(t) * (0.3 if t.ndim > 1 else 0.1) + (1.0 if "layernorm" in name
                                                                          and "weight" in name else 0.0))
        # ... but the fixed pos-embs are MAE's sincos (HF 5.x's random init leaves them at zero).
        model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(sincos_2d(4, 4, 32, True)))
        model.decoder.decoder_pos_embed.copy_(torch.from_numpy(sincos_2d(4, 4, 16, True)))
    return cfg, model


def _hf_to_params(model) -> dict:
    """Test-only mapping from HF ViTMAEForPreTraining's state dict to MAE's param tree."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def dense(prefix):
        return {"kernel": sd[prefix + ".weight"].T, "bias": sd[prefix + ".bias"]}

    def norm(prefix):
        return {"scale": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"]}

    def block(prefix):
        a = prefix + ".attention."
        return {"norm1": norm(prefix + ".layernorm_before"), "norm2": norm(prefix + ".layernorm_after"),
                "attn": {"query": dense(a + "q_proj"), "key": dense(a + "k_proj"),
                         "value": dense(a + "v_proj"), "out": dense(a + "o_proj")},
                "mlp": {"fc1": dense(prefix + ".mlp.fc1"), "fc2": dense(prefix + ".mlp.fc2")}}

    e = "vit.embeddings."
    encoder = {"cls_token": sd[e + "cls_token"],
               "embedding": {"kernel": sd[e + "patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
                             "bias": sd[e + "patch_embeddings.projection.bias"]},
               "norm": norm("vit.layernorm")}
    for i in range(model.config.num_hidden_layers):
        encoder[f"blocks_{i}"] = block(f"vit.layers.{i}")
    params = {"encoder": encoder, "decoder_embed": dense("decoder.decoder_embed"),
              "mask_token": sd["decoder.mask_token"], "decoder_norm": norm("decoder.decoder_norm"),
              "decoder_pred": dense("decoder.decoder_pred")}
    for i in range(model.config.decoder_num_hidden_layers):
        params[f"decoder_blocks_{i}"] = block(f"decoder.decoder_layers.{i}")
    return params


def test_hf_sincos_layout_matches_mae():
    # HF builds [sin_h|cos_h|sin_w|cos_w] then swaps the halves to MAE's (w first) layout.
    pe = hf_vit_mae.build_2d_sinusoidal_position_embedding(3, 5, 16, cls_token=True).numpy()
    pe = np.concatenate([pe[..., 8:], pe[..., :8]], axis=-1)
    np.testing.assert_allclose(pe[None], sincos_2d(3, 5, 16, cls_token=True), atol=1e-6)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_parity_with_hf(norm_pix_loss):
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    cfg, hf_model = _hf_mae(norm_pix_loss)
    params = jax.tree.map(jnp.asarray, _hf_to_params(hf_model))
    # our MAE built from the reference's config
    encoder = ViT(num_classes=0, posemb="sincos2d", patch_size=cfg.patch_size, width=cfg.hidden_size,
                  depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                  mlp_dim=cfg.intermediate_size, image_size=cfg.image_size,
                  layer_norm_eps=cfg.layer_norm_eps, act=cfg.hidden_act, qkv_bias=cfg.qkv_bias)
    model = mae.MAE(encoder=encoder, decoder_width=cfg.decoder_hidden_size,
                    decoder_depth=cfg.decoder_num_hidden_layers, decoder_heads=cfg.decoder_num_attention_heads,
                    decoder_mlp_dim=cfg.decoder_intermediate_size, norm_pix_loss=norm_pix_loss,
                    mask_ratio=cfg.mask_ratio)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)),
                                               noise=jnp.zeros((1, 16))))["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    assert jax.tree.map(lambda s, p: s.shape == p.shape, shapes, params) == jax.tree.map(lambda _: True, shapes)

    noise = np.random.default_rng(3).uniform(size=(3, 16)).astype(np.float32)
    with torch.no_grad():
        ref = hf_model(torch.from_numpy(images.transpose(0, 3, 1, 2)), noise=torch.from_numpy(noise))
    out = jax.jit(model.apply)({"params": params}, images, noise=noise)
    np.testing.assert_array_equal(np.asarray(out["mask"]), ref.mask.numpy())
    np.testing.assert_array_equal(np.asarray(out["ids_restore"]), ref.ids_restore.numpy())
    np.testing.assert_allclose(np.asarray(out["pred"]), ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(out["loss"]), ref.loss.item(), atol=1e-4, rtol=1e-4)
