"""Compact Convolutional Transformers (Hassani et al. 2021) and the paper's ViT-Lite baselines.

Call contract (shared by every backbone):
    out, aux = CCT(...).apply(variables, images, train=False, rngs={"dropout": key})
    images: (B, H, W, C) float32; any size the tokenizer maps to a non-empty token grid (the
    patch tokenizer: H and W multiples of the patch size); ValueError otherwise.  A learned
    pos-emb is resized (bilinear, like the reference's checkpoint loading) for other grids.
    out: logits (B, num_classes) float32, or the pooled features (B, D) when num_classes == 0.
    aux: {"encoded": (B, N, D) tokens after the final norm (class token first for pool="token"),
          "pre_logits": (B, D), "patch_grid": (h, w) the token grid (python ints),
          "pool_weights": (B, N) the sequence-pooling softmax (pool="seq" only)}.

Architecture (SHI-Labs/Compact-Transformers src/cct.py, utils/tokenizer.py, utils/transformers.py):
  tokenizer="conv" (CCT): n_conv_layers x [Conv kxk, no bias, Kaiming-normal -> ReLU ->
    MaxPool 3/2/1]; channels in_channels -> conv_channels -> ... -> width; conv stride
    max(1, k//2 - 1) and padding max(1, k//2) unless given.  32 px: CCT-x/3x1 256 tokens, 3x2 64.
  tokenizer="patch" (ViT-Lite, CVT): one Conv pxp stride p with bias, no ReLU, no pooling.
  tokens, row-major over the grid, [class token first] + pos-emb ("learn": trunc-normal std
  0.2; "sine": the reference's interleaved 1-D table over the flattened tokens, fixed;
  "none") -> dropout -> blocks -> final LayerNorm -> pool ("seq": softmax(Dense(D -> 1))
  over the tokens, weighted sum; "token": class token; "gap": mean) -> head.
  Block (the reference's TransformerEncoderLayer; note norm2 sits ON the residual stream):
    x = x + DP(attn(norm1 x));  x = norm2 x;  x = x + DP(mlp x)
  qkv without bias, exact GELU, LayerNorm eps 1e-5, Linear init trunc-normal 0.02 / zero bias.

Parameter tree: embedding/conv_{i}{kernel (k,k,C_in,C_out)[, bias]}, [cls_token (1,1,D)],
[pos_embed (1,[1+]h*w,D)], blocks_{j}/{norm1, attn/{qkv, out}, norm2, mlp/{fc1, fc2}}, norm,
[attention_pool{kernel (D,1), bias}], [head].  Reference names: tokenizer.conv_layers.{i}.0 =
embedding/conv_{i}, class_emb = cls_token, positional_emb = pos_embed; in each block pre_norm =
norm1, self_attn.qkv / proj = attn/qkv / out, norm1 = norm2, linear1/2 = mlp/fc1/2; fc = head.

Registered names (num_classes 10 at <= 32 px, else 1000; override as any field):
  cct_{2,4,6,7,14}_{k}x{n}_{img}[_sine]      e.g. cct_7_3x1_32, cct_7_3x1_32_sine, cct_2_3x2_32
  vit_lite_{2,4,6,7}_{p}_{img}[_sine]        ViT-Lite: patch conv + class token
  vit_lite_seqpool_{2,4,6,7}_{p}_{img}[_sine] the paper's "CVT" (ViT-Lite with SeqPool); a new
                                             name because cvt_* is our CvT (cvt.py)
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.layers import (Attention, DropPath, Dtype, MlpBlock, TokenDense, check_images, make_norm,
                                   pair)
from vit_jax.models.max_pool import max_pool_2d
from vit_jax.models.posemb import resize_pos_embed
from vit_jax.models.registry import register, register_pattern
from vit_jax.models.torch_init import default_bias, trunc_normal, trunc_normal_002

Array = jax.Array

_TOKENIZERS = ("conv", "patch")
_POSEMBS = ("learn", "sine", "none")
_POOLS = ("seq", "token", "gap")
# torch's kaiming_normal_ defaults (fan_in, leaky_relu a=0 -> gain sqrt 2), an untruncated normal
# (flax's he_normal truncates); flax counts the kxk receptive field in fan_in like torch.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv / pool (floor mode, as torch's default)."""
    return (size + 2 * padding - kernel) // stride + 1


def sine_posemb(length: int, dim: int) -> np.ndarray:
    """The reference's fixed table (1, length, dim): angle(p, i) = p / 10000^(2 (i//2) / dim),
    sin at even i, cos at odd i (interleaved, not [sin | cos]); angles rounded to float32 first
    as the reference builds them, so the table matches it to float32 rounding."""
    i = np.arange(dim)
    angle = (np.arange(length)[:, None] / 10000.0 ** (2 * (i // 2) / dim)).astype(np.float32)
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle))[None].astype(np.float32)


class ConvTokenizer(nn.Module, kw_only=True):
    """[Conv kxk -> ReLU? -> MaxPool?] x n_layers, flattened row-major.
    (B, H, W, C) -> (B, h*w, D).

    Intermediate layers have hidden_channels outputs (the reference's in_planes), the last
    `width`.  Kernels Kaiming-normal; biases (only the patch tokenizer has them) torch's
    default U(+-1/sqrt(fan_in)).
    """
    width: int
    n_layers: int = 1
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    hidden_channels: int = 64
    use_bias: bool = False
    relu: bool = True
    max_pool: bool = True
    maxpool_kernel: int = 3
    maxpool_stride: int = 2
    maxpool_padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, p, mp = self.kernel, self.padding, self.maxpool_padding
        for i in range(self.n_layers):
            out = self.width if i == self.n_layers - 1 else self.hidden_channels
            x = nn.Conv(out, (k, k), strides=self.stride, padding=((p, p), (p, p)),
                        use_bias=self.use_bias, kernel_init=kaiming_normal,
                        bias_init=default_bias(k * k * x.shape[-1]), dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"conv_{i}")(x)
            if self.relu:
                x = jax.nn.relu(x)
            if self.max_pool:  # -inf padding and torch's gradient, without select-and-scatter
                x = max_pool_2d(x, self.maxpool_kernel, self.maxpool_stride, mp)
        b, h, w, d = x.shape
        return x.reshape(b, h * w, d)


class CctBlock(nn.Module, kw_only=True):
    """The reference's encoder layer.  (B, N, D) -> (B, N, D).

    x = x + DP(attn(norm1 x));  x = norm2 x;  x = x + DP(mlp x)
    The second norm normalises the residual stream itself (so the MLP branch has no norm
    of its own): not the pre-norm layers.Block, whose second norm only feeds the MLP.
    """
    num_heads: int
    mlp_dim: int
    qkv_bias: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.1
    drop_path: float = 0.0
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dp = DropPath(rate=self.drop_path)
        y = Attention(num_heads=self.num_heads, qkv_bias=self.qkv_bias, fused_qkv=True,
                      attn_dropout=self.attn_dropout, proj_dropout=self.dropout,
                      kernel_init=trunc_normal_002, name="attn", **kw)(
            make_norm("layernorm", self.layer_norm_eps, name="norm1", **kw)(x), train)
        x = x + dp(y, train)
        x = make_norm("layernorm", self.layer_norm_eps, name="norm2", **kw)(x)
        y = MlpBlock(hidden_dim=self.mlp_dim, act=self.act, dropout=self.dropout,
                     kernel_init=trunc_normal_002, name="mlp", **kw)(x, train)
        return x + dp(y, train)


class CCT(nn.Module):
    """Compact Convolutional Transformer / ViT-Lite / CVT.  See the module docstring."""
    num_classes: int = 10             # 0: no head, `out` is the pooled features
    image_size: int | tuple[int, int] = 32   # sizes the learned pos-emb
    in_channels: int = 3
    width: int = 256                  # embedding dim D
    depth: int = 7
    num_heads: int = 4
    mlp_ratio: float = 2.0            # MLP hidden = int(width * mlp_ratio), as the reference
    tokenizer: str = "conv"           # "conv" (CCT) | "patch" (ViT-Lite / CVT)
    n_conv_layers: int = 1
    conv_kernel: int = 3
    conv_stride: int | None = None    # None: max(1, conv_kernel // 2 - 1)
    conv_padding: int | None = None   # None: max(1, conv_kernel // 2)
    conv_channels: int = 64           # outputs of the intermediate conv layers (in_planes)
    max_pool: bool = True
    maxpool_kernel: int = 3
    maxpool_stride: int = 2
    maxpool_padding: int = 1
    patch_size: int = 4               # tokenizer="patch" only
    posemb: str = "learn"             # "learn" | "sine" | "none"
    posemb_init_std: float = 0.2      # the reference's (not ViT's 0.02)
    posemb_interp: str = "bilinear"   # resizing a learned pos-emb: see posemb.resize_pos_embed
    pool: str = "seq"                 # "seq" (SeqPool) | "token" (class token) | "gap"
    dropout: float = 0.0
    attn_dropout: float = 0.1
    drop_path_rate: float = 0.1       # linear 0 -> rate over depth
    qkv_bias: bool = False
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32        # compute dtype; params stay param_dtype
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        # static config checked at construction: create(...) fails early and clearly.
        for field, value, allowed in (("tokenizer", self.tokenizer, _TOKENIZERS),
                                      ("posemb", self.posemb, _POSEMBS),
                                      ("pool", self.pool, _POOLS)):
            if value not in allowed:
                raise ValueError(f"CCT {field} must be one of {allowed}, got {value!r}.")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}.")
        if self.n_conv_layers < 1:
            raise ValueError(f"n_conv_layers must be >= 1, got {self.n_conv_layers}.")
        if self.max_pool and 2 * self.maxpool_padding > self.maxpool_kernel:
            raise ValueError(f"maxpool_padding {self.maxpool_padding} is more than half the "
                             f"max-pool kernel {self.maxpool_kernel} (torch refuses it too).")
        ih, iw = pair(self.image_size)
        self.token_grid(ih, iw, what="image_size")
        super().__post_init__()

    # ------------------------------------------------------------------ derived config
    @property
    def num_prefix_tokens(self) -> int:
        return int(self.pool == "token")

    @property
    def _conv(self) -> tuple[int, int, int]:
        """(kernel, stride, padding) of the tokenizer's convolutions."""
        if self.tokenizer == "patch":
            return self.patch_size, self.patch_size, 0
        k = self.conv_kernel
        s = max(1, k // 2 - 1) if self.conv_stride is None else self.conv_stride
        p = max(1, k // 2) if self.conv_padding is None else self.conv_padding
        return k, s, p

    def token_grid(self, h: int, w: int, what: str = "images") -> tuple[int, int]:
        """The tokenizer's output grid for (h, w) inputs; ValueError when it does not fit."""
        k, s, p = self._conv
        if self.tokenizer == "patch":
            if h % k or w % k or h < k or w < k:
                raise ValueError(f"{what} {h}x{w} is not divisible by the patch size {k}; use a "
                                 f"multiple of {k} (e.g. {max(h // k, 1) * k}x"
                                 f"{max(w // k, 1) * k}).")
            return h // k, w // k
        gh, gw = h, w
        for i in range(self.n_conv_layers):
            steps = [("conv", k, s, p)]
            if self.max_pool:
                steps.append(("max-pool", self.maxpool_kernel, self.maxpool_stride,
                              self.maxpool_padding))
            for op, kk, ss, pp in steps:
                gh, gw = _out(gh, kk, ss, pp), _out(gw, kk, ss, pp)
                if gh < 1 or gw < 1:
                    raise ValueError(
                        f"CCT tokenizer does not fit {what} {h}x{w}: the {op} of conv layer {i} "
                        f"(kernel {kk}, stride {ss}, padding {pp}) leaves a {gh}x{gw} grid. Use "
                        "larger images, or fewer conv layers / a smaller kernel or stride.")
        return gh, gw

    @property
    def base_grid(self) -> tuple[int, int]:
        """Token grid of `image_size`: the grid the learned pos-emb is stored at."""
        return self.token_grid(*pair(self.image_size), what="image_size")

    # ------------------------------------------------------------------ modules
    def setup(self) -> None:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        k, s, p = self._conv
        conv = self.tokenizer == "conv"
        self.embedding = ConvTokenizer(
            width=self.width, n_layers=self.n_conv_layers if conv else 1, kernel=k, stride=s,
            padding=p, hidden_channels=self.conv_channels, use_bias=not conv, relu=conv,
            max_pool=conv and self.max_pool, maxpool_kernel=self.maxpool_kernel,
            maxpool_stride=self.maxpool_stride, maxpool_padding=self.maxpool_padding, **kw)
        d = self.width
        if self.pool == "token":  # the reference leaves its class token at zeros
            self.cls_token = self.param("cls_token", nn.initializers.zeros, (1, 1, d),
                                        self.param_dtype)
        if self.posemb == "learn":
            gh, gw = self.base_grid
            self.pos_embed = self.param("pos_embed", trunc_normal(self.posemb_init_std),
                                        (1, self.num_prefix_tokens + gh * gw, d), self.param_dtype)
        self.pos_drop = nn.Dropout(self.dropout)
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)
        self.blocks = [CctBlock(num_heads=self.num_heads, mlp_dim=int(d * self.mlp_ratio),
                                qkv_bias=self.qkv_bias, dropout=self.dropout,
                                attn_dropout=self.attn_dropout, drop_path=float(r), act=self.act,
                                layer_norm_eps=self.layer_norm_eps, **kw) for r in rates]
        self.norm = make_norm("layernorm", self.layer_norm_eps, **kw)
        dense = functools.partial(TokenDense, kernel_init=trunc_normal_002, **kw)
        if self.pool == "seq":
            self.attention_pool = dense(1)
        if self.num_classes > 0:
            self.head = dense(self.num_classes)

    # ------------------------------------------------------------------ pieces
    def tokenize(self, images: Array) -> tuple[Array, tuple[int, int]]:
        """images (B, H, W, C) -> (tokenizer output (B, h*w, D) row-major, grid (h, w))."""
        check_images(images, self.in_channels, model="CCT")
        grid = self.token_grid(images.shape[1], images.shape[2])
        return self.embedding(images.astype(self.dtype)), grid

    def pos_embed_for(self, grid: tuple[int, int]) -> Array | None:
        """(1, P + h*w, D) position embedding for a token grid (class-token row first), or None."""
        if self.posemb == "learn":
            return resize_pos_embed(self.pos_embed, grid, self.num_prefix_tokens,
                                    old_grid=self.base_grid, method=self.posemb_interp)
        if self.posemb == "sine":  # recomputed for the sequence length, as the reference builds it
            return jnp.asarray(sine_posemb(self.num_prefix_tokens + grid[0] * grid[1], self.width))
        return None

    def embed(self, images: Array) -> tuple[Array, tuple[int, int]]:
        """images -> (tokens (B, [1+] h*w, D), class token first, pos-emb added; grid (h, w))."""
        x, grid = self.tokenize(images)
        if self.pool == "token":
            cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        pos = self.pos_embed_for(grid)
        if pos is not None:
            x = x + pos.astype(x.dtype)
        return x, grid

    def encode(self, tokens: Array, train: bool = False) -> Array:
        """(B, N, D) embedded tokens -> (B, N, D): dropout, the blocks, the final norm."""
        x = self.pos_drop(tokens, deterministic=not train)
        for blk in self.blocks:
            x = blk(x, train)
        return self.norm(x)

    def pool_tokens(self, x: Array) -> tuple[Array, Array | None]:
        """(B, N, D) encoded -> (pooled (B, D), SeqPool weights (B, N) or None)."""
        if self.pool == "token":
            return x[:, 0], None
        if self.pool == "gap":
            return x.mean(axis=1), None
        # SeqPool: one importance score per token, softmax over the tokens (float32), weighted sum.
        weights = jax.nn.softmax(self.attention_pool(x)[..., 0].astype(jnp.float32), axis=1)
        return jnp.einsum("bn,bnd->bd", weights.astype(x.dtype), x), weights

    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict[str, Any]]:
        """images (B, H, W, C) -> (logits (B, K) | features (B, D), aux); see module docstring."""
        x, grid = self.embed(images)
        x = self.encode(x, train)
        pooled, weights = self.pool_tokens(x)
        aux: dict[str, Any] = {"encoded": x, "pre_logits": pooled, "patch_grid": grid}
        if weights is not None:
            aux["pool_weights"] = weights
        out = self.head(pooled) if self.num_classes > 0 else pooled
        return out.astype(jnp.float32), aux


# ---------------------------------------------------------------------- registered names

# depth -> (width, num_heads, mlp_ratio): the reference's cct_2 ... cct_14 (ViT-Lite / CVT 2 ... 7).
CCT_SIZES: dict[int, tuple[int, int, float]] = {
    2: (128, 2, 1.0), 4: (128, 2, 1.0), 6: (256, 4, 2.0), 7: (256, 4, 2.0), 14: (384, 6, 3.0)}
VIT_LITE_DEPTHS = (2, 4, 6, 7)


def _sized(depth: int, image_size: int, posemb: str, **kw: Any) -> CCT:
    width, heads, ratio = CCT_SIZES[depth]
    return CCT(depth=depth, width=width, num_heads=heads, mlp_ratio=ratio, image_size=image_size,
               num_classes=10 if image_size <= 32 else 1000, posemb=posemb, **kw)


def cct(depth: int, kernel: int, n_conv_layers: int, image_size: int, posemb: str = "learn",
        **kw: Any) -> CCT:
    """CCT-{depth}/{kernel}x{n_conv_layers}: conv tokenizer + SeqPool."""
    return _sized(depth, image_size, posemb, conv_kernel=kernel, n_conv_layers=n_conv_layers, **kw)


def vit_lite(depth: int, patch: int, image_size: int, posemb: str = "learn",
             seq_pool: bool = False, **kw: Any) -> CCT:
    """ViT-Lite-{depth}/{patch} (class token), or with seq_pool the paper's CVT-{depth}/{patch}."""
    return _sized(depth, image_size, posemb, tokenizer="patch", patch_size=patch,
                  pool="seq" if seq_pool else "token", **kw)


def _posemb(suffix: str | None) -> str:
    return "sine" if suffix else "learn"


register_pattern(r"cct_(2|4|6|7|14)_(\d+)x(\d+)_(\d+)(_sine)?",
                 lambda m: cct(int(m[1]), int(m[2]), int(m[3]), int(m[4]), _posemb(m[5])),
                 hint="cct_{depth}_{k}x{n}_{img}[_sine] (depth in 2/4/6/7/14)")
register_pattern(r"vit_lite(_seqpool)?_(2|4|6|7)_(\d+)_(\d+)(_sine)?",
                 lambda m: vit_lite(int(m[2]), int(m[3]), int(m[4]), _posemb(m[5]), bool(m[1])),
                 hint="vit_lite[_seqpool]_{depth}_{p}_{img}[_sine] (depth in 2/4/6/7)")

register("cct_7_3x1_32", functools.partial(cct, 7, 3, 1, 32))
register("cct_7_3x1_32_sine", functools.partial(cct, 7, 3, 1, 32, "sine"))
register("cct_2_3x2_32", functools.partial(cct, 2, 3, 2, 32))
register("vit_lite_7_4_32", functools.partial(vit_lite, 7, 4, 32))
register("vit_lite_seqpool_7_4_32", functools.partial(vit_lite, 7, 4, 32, seq_pool=True))

__all__ = ["CCT", "CctBlock", "ConvTokenizer", "cct", "sine_posemb", "vit_lite"]
