"""Swin Transformer (Liu et al. 2021, microsoft/Swin-Transformer) as one flax.linen module.

Call contract (shared by every backbone):
    out, aux = Swin(...).apply(variables, images, train=False, rngs={"dropout": key})
    images: (B, H, W, C) float32, H and W multiples of patch_size (any resolution: every
    stage's map is padded right/bottom to a multiple of its window and cropped back, and a
    stage whose resolution is <= window_size uses window = resolution and no shift).
    out: logits (B, num_classes) float32, or the pooled features (B, C) when num_classes == 0.
    aux: {"encoded": (B, h*w, C) final tokens after the final norm (row-major, no class token),
          "stages": [(B, h_i, w_i, C_i) each stage's output before patch merging],
          "pre_logits": (B, C) average-pooled encoded tokens}.
    C = width * 2 ** (num_stages - 1); h, w = the last stage's resolution.
    With "intermediates" mutable every block sows its attention weights (B * nW, heads, n, n)
    (n = window^2, windows batch-major) as layers_i/blocks_j/attn/attn_weights.

Parameter tree (mirrors Hugging Face's encoder.layers.i.blocks.j, so the converter is a renaming):
    patch_embed{kernel (p,p,Cin,E), bias}, patch_norm, [absolute_pos_embed (1, h0*w0, E) with ape],
    layers_i/blocks_j/{norm1, attn{query, key, value, out, relative_position_bias_table
    ((2W-1)^2, heads)}, norm2, mlp{fc1, fc2}},  layers_i/downsample{norm (4C), reduction
    (4C -> 2C, no bias)} for every stage but the last,  norm, head.
The bias table is always sized by window_size (as in Hugging Face); a clamped window reads
its centre rows with the same index formula.  The patch-embed and patch-merging norms use
eps 1e-5 (torch's default, as the official code and Hugging Face do); the block norms and the
final norm use layer_norm_eps.
ape: the official code's absolute position embedding (off in every released Swin; Hugging Face's
use_absolute_embeddings), added after the patch norm, trunc-normal at ape_init_std (the official
0.02) and resized bicubically (torch's, as Hugging Face's interpolate_pos_encoding) to another
input's patch grid.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.layers import (DropPath, Dtype, MlpBlock, TokenDense, attention_recorder, check_images,
                                   dot_product_attention, make_norm, patch_embed_init)
from vit_jax.models.posemb import resize_pos_embed
from vit_jax.models.registry import register, register_pattern
from vit_jax.models.torch_init import trunc_normal

Array = jax.Array

# Official Swin: trunc_normal(std=.02) for every Linear and the bias table, zero biases.
_dense_init = nn.initializers.truncated_normal(0.02)
_TORCH_LN_EPS = 1e-5   # nn.LayerNorm default: the patch-embed / merging norms take no eps setting
_MASK_VALUE = -100.0   # the official shift mask value (not -inf): keep it for exact parity


# ----------------------------------------------------------------------------- static helpers

def relative_position_index(window: int, table_window: int) -> np.ndarray:
    """(n, n) indices into a ((2T-1)^2, heads) bias table for a window of `window` <= T tokens.

    index = (dh + T - 1) * (2T - 1) + (dw + T - 1) for the offsets (dh, dw) of token pairs,
    n = window^2 tokens row-major; window < T (a clamped window) reads the table's centre.
    """
    rows, cols = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    r, c = rows.reshape(-1), cols.reshape(-1)
    dh, dw = r[:, None] - r[None, :], c[:, None] - c[None, :]
    t = table_window
    return ((dh + t - 1) * (2 * t - 1) + (dw + t - 1)).astype(np.int32)


def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(num_windows, n, n) additive mask for shifted windows of a (height, width) padded map.

    After the cyclic shift each axis has 3 regions: [0, L-W), [L-W, L-s), [L-s, L); token
    pairs from different (row-region, col-region) labels get -100, others 0.
    """
    def regions(length: int) -> np.ndarray:
        i = np.arange(length)
        return (i >= length - window).astype(np.int32) + (i >= length - shift).astype(np.int32)

    labels = regions(height)[:, None] * 3 + regions(width)[None, :]
    win = window_partition(labels[None, :, :, None], window).reshape(-1, window * window)
    return np.where(win[:, None, :] != win[:, :, None], _MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x: Any, window: int) -> Any:
    """(B, H, W, C) -> (B * nH * nW, window, window, C), windows row-major (numpy or jax)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: Array, window: int, height: int, width: int) -> Array:
    """Inverse of window_partition: (B * nH * nW, window, window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def effective_window(height: int, width: int, window: int, shifted: bool) -> tuple[int, int]:
    """(window, shift) used at a (height, width) resolution: clamp to the resolution and
    drop the shift when the map fits in one window (official / Hugging Face rule)."""
    if min(height, width) <= window:
        return min(height, width), 0
    return window, (window // 2 if shifted else 0)


# ----------------------------------------------------------------------------- modules

class WindowAttention(nn.Module, kw_only=True):
    """Multi-head attention inside windows with the relative position bias.

    (B_w, n, C) windows -> (B_w, n, C), n = window^2 (window <= table_window).  `mask` is
    (num_windows, n, n) (added after the bias) or None; B_w = batch * num_windows.
    """
    num_heads: int
    table_window: int                 # sizes the bias table: ((2T-1)^2, heads)
    qkv_bias: bool = True
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, window: int, mask: np.ndarray | None = None,
                 train: bool = False) -> Array:
        bw, n, c = x.shape
        h, hd = self.num_heads, c // self.num_heads
        dense = functools.partial(TokenDense, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=_dense_init)
        q, k, v = (dense(c, use_bias=self.qkv_bias, name=name)(x).reshape(bw, n, h, hd)
                   for name in ("query", "key", "value"))
        t = self.table_window
        table = self.param("relative_position_bias_table", _dense_init,
                           ((2 * t - 1) ** 2, h), self.param_dtype)
        bias = table[relative_position_index(window, t)].astype(jnp.float32)   # (n, n, h)
        terms = [bias.transpose(2, 0, 1)[None]]                                # (1, h, n, n)
        if mask is not None:
            # windows are batch-major (window index fastest): tiling the (nW, n, n) mask over
            # the batch lines each window up with its mask.
            terms.append(jnp.tile(jnp.asarray(mask), (bw // mask.shape[0], 1, 1))[:, None])
        o = dot_product_attention(q, k, v, scale=hd ** -0.5, bias=terms, dropout=self.attn_dropout,
                                  deterministic=not train, record=attention_recorder(self))
        o = dense(c, name="out")(o.reshape(bw, n, c))
        return nn.Dropout(self.proj_dropout, deterministic=not train)(o)


class SwinBlock(nn.Module, kw_only=True):
    """Pre-norm (shifted-)window block.  (B, H, W, C) -> (B, H, W, C).

    x = x + DropPath(WindowAttn(norm1(x)));  x = x + DropPath(Mlp(norm2(x)))
    The normed map is padded right/bottom with zeros to a multiple of the window (the
    padded tokens take part in attention, as in the official code), rolled by -shift,
    attended per window, rolled back by +shift and cropped.
    """
    num_heads: int
    window_size: int
    shifted: bool = False             # odd blocks: shift by window_size // 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        b, height, width, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        window, shift = effective_window(height, width, self.window_size, self.shifted)
        dp = DropPath(rate=self.drop_path)

        y = make_norm("layernorm", self.layer_norm_eps, name="norm1", **kw)(x)
        pad_h, pad_w = -height % window, -width % window
        y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hp, wp = height + pad_h, width + pad_w
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        mask = shift_mask(hp, wp, window, shift) if shift else None
        windows = window_partition(y, window).reshape(-1, window * window, c)
        windows = WindowAttention(num_heads=self.num_heads, table_window=self.window_size,
                                  qkv_bias=self.qkv_bias, attn_dropout=self.attn_dropout,
                                  proj_dropout=self.dropout, name="attn", **kw)(
                                      windows, window, mask, train)
        y = window_reverse(windows.reshape(-1, window, window, c), window, hp, wp)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + dp(y[:, :height, :width], train)

        y = make_norm("layernorm", self.layer_norm_eps, name="norm2", **kw)(x)
        y = MlpBlock(hidden_dim=int(self.mlp_ratio * c), act=self.act, dropout=self.dropout,
                     kernel_init=_dense_init, name="mlp", **kw)(y, train)
        return x + dp(y, train)


class PatchMerging(nn.Module, kw_only=True):
    """2x2 neighbourhood concat -> LN(4C) -> Linear(4C -> 2C, no bias).

    (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).

    Odd H / W are zero-padded at the bottom / right first (Hugging Face); the concat order
    is x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] (official order).
    """
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2],
                             x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = make_norm("layernorm", _TORCH_LN_EPS, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="norm")(x)
        return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=_dense_init, name="reduction")(x)


class SwinStage(nn.Module, kw_only=True):
    """`depth` blocks (odd ones shifted), then optional patch merging.

    (B, H, W, C) -> (stage output (B, H, W, C), next input (B, H', W', C') or the output)."""
    depth: int
    num_heads: int
    window_size: int
    drop_path: Sequence[float]
    downsample: bool
    block_kw: dict[str, Any]

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
        for j in range(self.depth):
            x = SwinBlock(num_heads=self.num_heads, window_size=self.window_size,
                          shifted=j % 2 == 1, drop_path=float(self.drop_path[j]),
                          name=f"blocks_{j}", **self.block_kw)(x, train)
        nxt = x
        if self.downsample:
            nxt = PatchMerging(dtype=self.block_kw["dtype"],
                               param_dtype=self.block_kw["param_dtype"], name="downsample")(x)
        return x, nxt


class Swin(nn.Module):
    """Swin Transformer.  See the module docstring for the call contract."""
    num_classes: int = 1000           # 0: no head, `out` is the pooled features
    patch_size: int = 4
    width: int = 96                   # the first stage's width; stage i has width * 2**i
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0       # linearly increasing 0 -> rate over all blocks
    dropout: float = 0.0
    attn_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    act: str = "gelu"
    image_size: int = 224             # only the default input of init / param counts
    in_channels: int = 3
    ape: bool = False                 # absolute position embedding (the official `ape`)
    ape_init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        # Validate static config at construction, so create(...) fails early and clearly.
        if self.ape and self.image_size % self.patch_size:
            raise ValueError(f"ape=True needs image_size ({self.image_size}) to be a multiple of "
                             f"patch_size ({self.patch_size}): it sizes the position embedding.")
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} "
                             "must be non-empty and of the same length (one entry a stage).")
        for i, h in enumerate(self.num_heads):
            dim = self.width * 2 ** i
            if dim % h:
                raise ValueError(f"stage {i} width {dim} (width * 2**{i}) is not divisible by "
                                 f"num_heads[{i}] = {h}; pick heads dividing the width.")
        if self.window_size < 1 or self.patch_size < 1:
            raise ValueError(f"window_size and patch_size must be >= 1, got "
                             f"{self.window_size} and {self.patch_size}.")
        super().__post_init__()

    @property
    def num_features(self) -> int:
        """Width C of the final tokens."""
        return self.width * 2 ** (len(self.depths) - 1)

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict[str, Any]]:
        """images (B, H, W, C) -> (logits (B, K) | features (B, C), aux); see module docstring."""
        # any multiple of patch_size works: the stages pad to their window themselves.
        check_images(images, self.in_channels, self.patch_size, model="Swin")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                    kernel_init=patch_embed_init, name="patch_embed",
                    **kw)(images.astype(self.dtype))
        x = make_norm("layernorm", _TORCH_LN_EPS, name="patch_norm", **kw)(x)
        if self.ape:
            g0 = self.image_size // p
            table = self.param("absolute_pos_embed", trunc_normal(self.ape_init_std),
                               (1, g0 * g0, self.width), self.param_dtype)
            b, h, w, c = x.shape
            table = resize_pos_embed(table, (h, w), 0, old_grid=(g0, g0), method="bicubic")
            x = x + table.reshape(1, h, w, c).astype(x.dtype)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)

        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
        block_kw = dict(mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, dropout=self.dropout,
                        attn_dropout=self.attn_dropout, act=self.act,
                        layer_norm_eps=self.layer_norm_eps, **kw)
        stages, start = [], 0
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            out, x = SwinStage(depth=depth, num_heads=heads, window_size=self.window_size,
                               drop_path=tuple(rates[start:start + depth]),
                               downsample=i < len(self.depths) - 1, block_kw=block_kw,
                               name=f"layers_{i}")(x, train)
            stages.append(out)
            start += depth

        b, h, w, c = x.shape
        encoded = make_norm("layernorm", self.layer_norm_eps, name="norm", **kw)(x)
        encoded = encoded.reshape(b, h * w, c)
        pooled = encoded.mean(axis=1)
        out = pooled
        if self.num_classes > 0:
            out = nn.Dense(self.num_classes, kernel_init=_dense_init, name="head", **kw)(pooled)
        aux = {"encoded": encoded, "stages": stages, "pre_logits": pooled}
        return out.astype(jnp.float32), aux


# ----------------------------------------------------------------------------- registry

# size -> (width, depths, num_heads)
SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def swin(size: str, patch: int = 4, window: int = 7, image_size: int = 224, **kw: Any) -> Swin:
    """A Swin of a named size (1000 classes)."""
    width, depths, heads = SWIN_SIZES[size]
    return Swin(num_classes=1000, patch_size=patch, width=width, depths=depths,
                num_heads=heads, window_size=window, image_size=image_size, **kw)


register_pattern(r"swin_(" + "|".join(SWIN_SIZES) + r")_patch(\d+)_window(\d+)_(\d+)",
                 lambda m: swin(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))),
                 hint=f"swin_{{size}}_patch{{p}}_window{{w}}_{{img}} (size in {'/'.join(SWIN_SIZES)})")
for _size in ("tiny", "small", "base"):
    register(f"swin_{_size}_patch4_window7_224", functools.partial(swin, _size, 4, 7, 224))

__all__ = ["Swin", "SwinBlock", "SwinStage", "WindowAttention", "PatchMerging", "swin",
           "SWIN_SIZES", "relative_position_index", "shift_mask", "window_partition",
           "window_reverse", "effective_window"]
