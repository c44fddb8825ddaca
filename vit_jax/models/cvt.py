"""CvT: Convolutional vision Transformer (Wu et al. 2021) as one flax.linen module.

Call contract (shared by every backbone):
    out, aux = CvT(...).apply(variables, images, train=False)
    train=True normalises the conv projections with batch statistics and updates the
    running averages:  `apply(variables, x, train=True, mutable=["batch_stats"],
    rngs={"dropout": key})` -> ((out, aux), {"batch_stats": ...}).
    images: (B, H, W, C) float32, any size the convolutions allow (ValueError otherwise).
    out: logits (B, num_classes) float32, or the pooled features (B, D) when num_classes == 0
         (the class token after the final norm; the mean of the normed tokens when the last
         stage has no class token).
    aux: {"encoded": (B, [1+] h*w, D) final tokens after the final norm, class token first,
          "stages": [(B, h_i, w_i, C_i)] each stage's token map (before the final norm),
          "pre_logits": (B, D)}.
    With "intermediates" mutable every block sows its attention weights (B, heads, [1+] h*w,
    [1+] h_kv*w_kv) as stage_{i}_blocks_{j}/attn/attn_weights (class token first).

Architecture (microsoft/CvT cls_cvt.py; Hugging Face CvtModel):
  per stage: conv token embedding (with bias) + LayerNorm, no position embedding, a class
  token only where class_token[i] (the last stage by default), then pre-norm blocks whose
  q / k / v each come from depthwise conv (no bias) -> BatchNorm -> flatten -> Linear; the
  class token bypasses the convs.  Attention scale is dim^-0.5 (the stage width, not the
  head width).  MLP activation: exact GELU as in Hugging Face's CvtModel (the official
  code uses QuickGELU: act="quick_gelu").

Parameter tree:  stage_{i}_embed_conv{kernel (k,k,C_in,C), bias}, stage_{i}_embed_norm,
stage_{i}_cls_token (1,1,C) (where class_token[i]), stage_{i}_blocks_{j}/{norm1, attn/{conv_q,
conv_k, conv_v}/{conv{kernel (k,k,1,C)}, bn{scale, bias}}, attn/{query, key, value, out},
norm2, mlp/{fc1, fc2}}, norm, head.  BatchNorm running statistics:
batch_stats/stage_{i}_blocks_{j}/attn/conv_{q,k,v}/bn/{mean, var}.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.batch_norm import BatchNorm
from vit_jax.models.layers import (DropPath, Dtype, MlpBlock, TokenDense, attention_recorder, check_images,
                                   dot_product_attention, make_norm)
from vit_jax.models.registry import register

Array = jax.Array

# official / HF init: trunc_normal(0.02) for Linear and Conv weights, zero biases.
_init = nn.initializers.truncated_normal(0.02)


def _per_stage(value: Any, n: int, what: str) -> tuple:
    """A scalar (same for every stage) or a length-n sequence -> a length-n tuple."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries but the model has {n} stages.")
        return tuple(value)
    return (value,) * n


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ConvProjection(nn.Module, kw_only=True):
    """Depthwise conv (no bias) -> BatchNorm -> flatten.  (B, h, w, C) -> (B, h'*w', C)."""
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        p = self.padding
        x = nn.Conv(c, (self.kernel, self.kernel), strides=self.stride, padding=((p, p), (p, p)),
                    feature_group_count=c, use_bias=False, kernel_init=_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="conv")(x)
        x = BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="bn")(x, train)
        return x.reshape(x.shape[0], -1, c)


class ConvAttention(nn.Module, kw_only=True):
    """Convolutional-projection attention.  (B, [1+] h*w, C) -> (B, [1+] h*w, C)."""
    num_heads: int
    class_token: bool = False         # the first token is a class token (skips the convs)
    qkv_bias: bool = True
    kernel: int = 3
    stride_q: int = 1
    stride_kv: int = 2
    padding_q: int = 1
    padding_kv: int = 1
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, hw: tuple[int, int], train: bool = False) -> Array:
        b, _, c = x.shape
        h = self.num_heads
        if c % h:
            raise ValueError(f"width {c} is not divisible by num_heads {h}.")
        if self.class_token:
            cls, x = x[:, :1], x[:, 1:]
        grid = x.reshape(b, hw[0], hw[1], c)
        proj = functools.partial(ConvProjection, kernel=self.kernel, bn_momentum=self.bn_momentum,
                                 bn_eps=self.bn_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        q = proj(stride=self.stride_q, padding=self.padding_q, name="conv_q")(grid, train)
        k = proj(stride=self.stride_kv, padding=self.padding_kv, name="conv_k")(grid, train)
        v = proj(stride=self.stride_kv, padding=self.padding_kv, name="conv_v")(grid, train)
        if self.class_token:  # the class token skips the convolutions
            q, k, v = (jnp.concatenate([cls.astype(t.dtype), t], axis=1) for t in (q, k, v))

        dense = functools.partial(TokenDense, c, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=_init)
        q = dense(use_bias=self.qkv_bias, name="query")(q).reshape(b, q.shape[1], h, c // h)
        k = dense(use_bias=self.qkv_bias, name="key")(k).reshape(b, k.shape[1], h, c // h)
        v = dense(use_bias=self.qkv_bias, name="value")(v).reshape(b, v.shape[1], h, c // h)
        # CvT quirk: the scale is the full width's, not the head width's.
        o = dot_product_attention(q, k, v, scale=c ** -0.5, dropout=self.attn_dropout,
                                  deterministic=not train, record=attention_recorder(self))
        o = dense(name="out")(o.reshape(b, -1, c))
        return nn.Dropout(self.proj_dropout, deterministic=not train)(o)


class CvtBlock(nn.Module, kw_only=True):
    """Pre-norm block with convolutional attention.  (B, [1+] h*w, C) -> same.

    Drop path is on each residual branch (official CvT; HF's CvtLayer applies it to the
    MLP branch *plus* the residual, which only matters in training).
    """
    num_heads: int
    mlp_ratio: float = 4.0
    class_token: bool = False
    qkv_bias: bool = True
    kernel: int = 3
    stride_q: int = 1
    stride_kv: int = 2
    padding_q: int = 1
    padding_kv: int = 1
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, hw: tuple[int, int], train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dp = DropPath(rate=self.drop_path)
        y = ConvAttention(num_heads=self.num_heads, class_token=self.class_token,
                          qkv_bias=self.qkv_bias, kernel=self.kernel, stride_q=self.stride_q,
                          stride_kv=self.stride_kv, padding_q=self.padding_q,
                          padding_kv=self.padding_kv, attn_dropout=self.attn_dropout,
                          proj_dropout=self.dropout, bn_momentum=self.bn_momentum,
                          bn_eps=self.bn_eps, name="attn", **kw)(
            make_norm("layernorm", self.layer_norm_eps, name="norm1", **kw)(x), hw, train)
        x = x + dp(y, train)
        y = MlpBlock(hidden_dim=int(x.shape[-1] * self.mlp_ratio), act=self.act,
                     dropout=self.dropout, kernel_init=_init, name="mlp", **kw)(
            make_norm("layernorm", self.layer_norm_eps, name="norm2", **kw)(x), train)
        return x + dp(y, train)


class CvT(nn.Module):
    """Convolutional vision Transformer.  See the module docstring for the call contract.

    Per-stage fields are tuples (one entry a stage); mlp_ratio, dropout, attn_dropout,
    drop_path_rate and qkv_bias may also be one value for every stage.  drop_path_rate rises linearly
    from 0 to the stage's rate over that stage's blocks (official CvT).
    """
    num_classes: int = 1000           # 0: no head, `out` is the pooled features
    in_channels: int = 3
    image_size: int | tuple[int, int] = 224   # the nominal size (init / param counts only)
    widths: Sequence[int] = (64, 192, 384)
    depths: Sequence[int] = (1, 2, 10)
    num_heads: Sequence[int] = (1, 3, 6)
    mlp_ratio: float | Sequence[float] = (4.0, 4.0, 4.0)
    patch_sizes: Sequence[int] = (7, 3, 3)
    patch_strides: Sequence[int] = (4, 2, 2)
    patch_paddings: Sequence[int] = (2, 1, 1)
    kernel_qkv: Sequence[int] = (3, 3, 3)
    stride_q: Sequence[int] = (1, 1, 1)
    stride_kv: Sequence[int] = (2, 2, 2)
    padding_q: Sequence[int] = (1, 1, 1)
    padding_kv: Sequence[int] = (1, 1, 1)
    class_token: Sequence[bool] = (False, False, True)
    qkv_bias: bool | Sequence[bool] = True
    act: str = "gelu"                 # HF CvtModel: exact GELU; official CvT: "quick_gelu"
    dropout: float | Sequence[float] = 0.0
    attn_dropout: float | Sequence[float] = 0.0
    drop_path_rate: float | Sequence[float] = 0.0
    layer_norm_eps: float = 1e-5
    bn_momentum: float = 0.9          # flax convention: PyTorch's momentum 0.1
    bn_eps: float = 1e-5
    final_norm: bool = True           # False: HF CvtModel (no norm after the last stage)
    dtype: Dtype = jnp.float32        # compute dtype; params stay param_dtype
    param_dtype: Dtype = jnp.float32

    def _stage_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """The token grid of each stage for an (h, w) image; ValueError when too small."""
        sizes = []
        n = len(self.widths)
        for i, (k, s, p) in enumerate(zip(self.patch_sizes, self.patch_strides,
                                          self.patch_paddings)):
            h2, w2 = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
            if h2 < 1 or w2 < 1:
                where = f"stage {i}'s input" if i else "the image"
                raise ValueError(
                    f"{where} is {h}x{w}, too small "
                    f"for stage {i}'s token embedding (kernel {k}, stride {s}, padding {p}); "
                    f"this {n}-stage CvT needs larger images.")
            h, w = h2, w2
            sizes.append((h, w))
        return sizes

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict[str, Any]]:
        check_images(images, self.in_channels, model="CvT")   # sizes: see _stage_sizes
        n = len(self.widths)
        per = {name: _per_stage(getattr(self, name), n, name) for name in (
            "depths", "num_heads", "mlp_ratio", "patch_sizes", "patch_strides", "patch_paddings",
            "kernel_qkv", "stride_q", "stride_kv", "padding_q", "padding_kv", "class_token",
            "qkv_bias", "dropout", "attn_dropout", "drop_path_rate")}
        sizes = self._stage_sizes(images.shape[1], images.shape[2])
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        x = images.astype(self.dtype)
        b = x.shape[0]
        stages: list[Array] = []
        cls = None
        for i, dim in enumerate(self.widths):
            k, s, p = per["patch_sizes"][i], per["patch_strides"][i], per["patch_paddings"][i]
            x = nn.Conv(dim, (k, k), strides=s, padding=((p, p), (p, p)), kernel_init=_init,
                        name=f"stage_{i}_embed_conv", **kw)(x)
            gh, gw = sizes[i]
            tokens = make_norm("layernorm", self.layer_norm_eps, name=f"stage_{i}_embed_norm",
                               **kw)(x.reshape(b, gh * gw, dim))
            tokens = nn.Dropout(per["dropout"][i], deterministic=not train)(tokens)
            with_cls = bool(per["class_token"][i])
            if with_cls:
                tok = self.param(f"stage_{i}_cls_token", _init, (1, 1, dim), self.param_dtype)
                tokens = jnp.concatenate(
                    [jnp.broadcast_to(tok, (b, 1, dim)).astype(tokens.dtype), tokens], axis=1)
            rates = np.linspace(0.0, per["drop_path_rate"][i], per["depths"][i])
            for j in range(per["depths"][i]):
                tokens = CvtBlock(
                    num_heads=per["num_heads"][i], mlp_ratio=per["mlp_ratio"][i],
                    class_token=with_cls, qkv_bias=bool(per["qkv_bias"][i]),
                    kernel=per["kernel_qkv"][i], stride_q=per["stride_q"][i],
                    stride_kv=per["stride_kv"][i], padding_q=per["padding_q"][i],
                    padding_kv=per["padding_kv"][i], dropout=per["dropout"][i],
                    attn_dropout=per["attn_dropout"][i], drop_path=float(rates[j]),
                    act=self.act, layer_norm_eps=self.layer_norm_eps,
                    bn_momentum=self.bn_momentum, bn_eps=self.bn_eps,
                    name=f"stage_{i}_blocks_{j}", **kw)(tokens, (gh, gw), train)
            cls = tokens[:, :1] if with_cls else None
            x = (tokens[:, 1:] if with_cls else tokens).reshape(b, gh, gw, dim)
            stages.append(x)

        # Final tokens: [cls,] last stage's grid.  LayerNorm is per token, so norming them
        # all gives HF's layernorm(cls_token) for the class token.
        encoded = tokens
        if self.final_norm:
            encoded = make_norm("layernorm", self.layer_norm_eps, name="norm", **kw)(encoded)
        pooled = encoded[:, 0] if cls is not None else encoded.mean(axis=1)
        aux: dict[str, Any] = {"encoded": encoded, "stages": stages, "pre_logits": pooled}
        if self.num_classes <= 0:
            return pooled, aux
        logits = nn.Dense(self.num_classes, kernel_init=_init, name="head", **kw)(pooled)
        return logits.astype(jnp.float32), aux


def cvt(widths: tuple[int, ...], depths: tuple[int, ...], num_heads: tuple[int, ...],
        image_size: int = 224, **kw: Any) -> CvT:
    """A CvT with 1000 classes; official drop-path rates (0, 0, 0.1)."""
    return CvT(widths=widths, depths=depths, num_heads=num_heads, image_size=image_size,
               num_classes=1000, drop_path_rate=(0.0, 0.0, 0.1), **kw)


register("cvt_13_224", functools.partial(cvt, (64, 192, 384), (1, 2, 10), (1, 3, 6)))
register("cvt_21_224", functools.partial(cvt, (64, 192, 384), (1, 4, 16), (1, 3, 6)))
register("cvt_w24_384", functools.partial(cvt, (192, 768, 1024), (2, 2, 20), (3, 12, 16),
                                          image_size=384))

__all__ = ["CvT", "CvtBlock", "ConvAttention", "ConvProjection", "BatchNorm", "cvt"]
