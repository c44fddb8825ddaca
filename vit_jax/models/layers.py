"""Shared transformer building blocks (flax.linen) and position-embedding helpers.

Every family (ViT, Swin, CvT) uses the one attention core `dot_product_attention`, the input
check `check_images` and `pair`; sub-modules are keyword-only (kw_only=True).

Parameter names follow timm / Hugging Face where that is simple, so converters stay a
renaming plus transposes:
  Block:     norm1, attn, ls1 (layer scale, optional), norm2, mlp, ls2
  Attention: query, key, value (or fused qkv), out      each {kernel, bias}
  MlpBlock:  fc1, fc2                                   each {kernel, bias}
Dense kernels are (in, out) as usual in flax (torch weights are (out, in): transpose).

Shapes: B batch, L tokens, D width, H heads, hd = D // H.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# MAE / google vit init: xavier_uniform for Linear, zero biases.
dense_init: Initializer = nn.initializers.xavier_uniform()
# MAE inits the patch-embed conv as a Linear on the flattened (p*p*C -> D) weight.
patch_embed_init: Initializer = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)


# ----------------------------------------------------------------------------- sizes and inputs

def pair(x: int | Sequence[int]) -> tuple[int, int]:
    """A size given as one int (square) or (h, w) -> (h, w) python ints."""
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


def check_images(images: Any, in_channels: int, patch_size: int | Sequence[int] = 1, *,
                 model: str = "the model") -> tuple[int, int]:
    """Validate a (B, H, W, C) batch for a backbone; returns the patch grid (H / ph, W / pw).

    ValueError, with the fix, for a missing batch axis, channels first or a wrong channel
    count, an empty image, and H or W not a multiple of patch_size (1: any size).
    """
    if images.ndim != 4:
        raise ValueError(f"{model} expects NHWC images (B, H, W, C); got shape {images.shape}. "
                         "Add a batch axis with images[None].")
    if images.shape[-1] != in_channels:
        raise ValueError(f"{model} expects {in_channels} channels last (NHWC); got shape "
                         f"{images.shape}. For NCHW input use images.transpose(0, 2, 3, 1), "
                         "or set in_channels.")
    (h, w), (ph, pw) = images.shape[1:3], pair(patch_size)
    if h < 1 or w < 1:
        raise ValueError(f"{model} got empty images of shape {images.shape}.")
    if h % ph or w % pw:
        size = str(ph) if ph == pw else f"{ph}x{pw}"
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {size}; resize or "
                         f"crop to a multiple of {size} (e.g. {max(h // ph, 1) * ph}x"
                         f"{max(w // pw, 1) * pw}).")
    return h // ph, w // pw


# ----------------------------------------------------------------------------- activations

def quick_gelu(x: Array) -> Array:
    """OpenAI CLIP / CvT QuickGELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # exact erf gelu is torch's nn.GELU() default (HF "gelu"); jax defaults to tanh: be explicit.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """Activation function by (HF-style) name, e.g. "gelu", "gelu_tanh", "quick_gelu"."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}.") from None


# ----------------------------------------------------------------------------- norms

def make_norm(kind: str = "layernorm", eps: float = 1e-6, *, dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
    """A normalisation layer over the last axis: "layernorm" (scale, bias) or "rmsnorm" (scale)."""
    if kind == "layernorm":
        # use_fast_variance=False: E[(x-mean)^2] like torch, not E[x^2]-mean^2 (parity, bf16 safety).
        return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                            use_fast_variance=False, name=name)
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)
    raise ValueError(f"Unknown norm {kind!r}; choose 'layernorm' or 'rmsnorm'.")


# ----------------------------------------------------------------------------- MLP

class MlpBlock(nn.Module, kw_only=True):
    """Dense(hidden) -> act -> dropout -> Dense(out) -> dropout.  (B, L, D) -> (B, L, out or D)."""
    hidden_dim: int
    out_dim: int | None = None
    act: str = "gelu"
    dropout: float = 0.0
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = dense_init
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        dense = functools.partial(nn.Dense, use_bias=self.use_bias, dtype=self.dtype,
                                  param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                                  bias_init=self.bias_init)
        out_dim = self.out_dim or x.shape[-1]
        x = dense(self.hidden_dim, name="fc1")(x)
        x = get_activation(self.act)(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = dense(out_dim, name="fc2")(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


# ----------------------------------------------------------------------------- attention

Recorder = Callable[[Array], Any]


def attention_recorder(module: nn.Module) -> Recorder | None:
    """`module.sow("intermediates", "attn_weights", w)` when the caller made "intermediates"
    mutable (attention maps: vit_jax/evaluate/attention.py), else None (the fast path)."""
    if module.is_mutable_collection("intermediates"):
        return functools.partial(module.sow, "intermediates", "attn_weights")
    return None


def dot_product_attention(q: Array, k: Array, v: Array, *, scale: float,
                          bias: Sequence[Array] = (), dropout: float = 0.0,
                          deterministic: bool = True, record: Recorder | None = None) -> Array:
    """Multi-head attention core: softmax(q k^T * scale + bias) v.  The one copy every family uses.

    q: (B, Lq, H, hd); k, v: (B, Lk, H, hd) -> (B, Lq, H, hd).
    bias: additive logit terms, each broadcastable to (B, H, Lq, Lk), added in order (Swin:
      the relative-position bias, then the shift mask; kept separate so the float32 sums
      round exactly as the reference code's do).
    dropout / deterministic: attention dropout on the weights, an nn.Dropout of the calling
      module (rng collection "dropout"), so call this from inside a compact method.
    record: called with the weights (B, H, Lq, Lk) float32 before dropout (see
      `attention_recorder`).

    Fast path (no bias, no active dropout, no recording): jax.nn.dot_product_attention, the
    fused kernel where the backend has one.  Otherwise the explicit path with the softmax in
    float32; it agrees with the fast path to float rounding, so recorded weights are the ones
    the model uses.
    """
    active_dropout = not deterministic and dropout > 0.0
    if not bias and not active_dropout and record is None:
        return jax.nn.dot_product_attention(q, k, v, scale=scale)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    for term in bias:
        logits = logits + term
    weights = jax.nn.softmax(logits, axis=-1)
    if record is not None:
        record(weights)
    # Built on every explicit call (a no-op unless active): the caller's auto-named dropouts
    # (Dropout_0, _1, ...) and so their rng streams stay those of the original modules.
    weights = nn.Dropout(dropout, deterministic=not active_dropout)(weights)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


class Attention(nn.Module, kw_only=True):
    """Multi-head self-attention.  (B, L, D) -> (B, L, D).

    The core is `dot_product_attention`: fused when it can be; explicit (softmax in float32)
    when attention dropout is active (train and attn_dropout > 0) or when "intermediates" is
    mutable, in which case the weights (B, H, L, L) are sown as intermediates/.../attn_weights.
    """
    num_heads: int
    qkv_bias: bool = True
    fused_qkv: bool = False          # one "qkv" Dense (timm / MAE layout: out = (3, H, hd))
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    scale: float | None = None       # default hd ** -0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = dense_init
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        b, l, d = x.shape
        h = self.num_heads
        if d % h:
            raise ValueError(f"width {d} is not divisible by num_heads {h}; "
                             "pick num_heads dividing the width.")
        hd = d // h
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=self.kernel_init, bias_init=self.bias_init)
        if self.fused_qkv:
            qkv = dense(3 * d, use_bias=self.qkv_bias, name="qkv")(x).reshape(b, l, 3, h, hd)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q, k, v = (dense(d, use_bias=self.qkv_bias, name=n)(x).reshape(b, l, h, hd)
                       for n in ("query", "key", "value"))
        o = dot_product_attention(q, k, v, scale=hd ** -0.5 if self.scale is None else self.scale,
                                  dropout=self.attn_dropout, deterministic=not train,
                                  record=attention_recorder(self))
        o = dense(d, name="out")(o.reshape(b, l, d))
        return nn.Dropout(self.proj_dropout, deterministic=not train)(o)


# ----------------------------------------------------------------------------- stochastic depth

def drop_path(x: Array, rate: float | Array, rng: Array) -> Array:
    """Per-sample stochastic depth: zero whole samples with prob `rate`, scale survivors by 1/keep."""
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    # guard keep == 0 (rate 1): no inf reaches the gradient.
    scale = jnp.where(keep > 0, 1.0 / jnp.maximum(keep, 1e-12), 0.0)
    return jnp.where(mask, x * scale.astype(x.dtype), jnp.zeros((), x.dtype))


class DropPath(nn.Module, kw_only=True):
    """Stochastic depth (rng collection "dropout").  Identity when not training.

    `rate` may be overridden per call (a traced scalar under nn.scan, where every layer
    has its own rate); the field then only says whether drop path is on at all.
    """
    rate: float = 0.0

    def __call__(self, x: Array, train: bool = False, rate: float | Array | None = None) -> Array:
        if not train or self.rate == 0.0:
            return x
        return drop_path(x, self.rate if rate is None else rate, self.make_rng("dropout"))


class LayerScale(nn.Module, kw_only=True):
    """Per-channel learned scale (CaiT / DINOv2 layer scale), param "gamma" (D,)."""
    init_values: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_values),
                           (x.shape[-1],), self.param_dtype)
        return x * gamma.astype(x.dtype)


# ----------------------------------------------------------------------------- encoder block

class Block(nn.Module, kw_only=True):
    """Pre-norm transformer block.  (B, L, D) -> (B, L, D).

    x = x + DropPath(LS1(Attn(norm1(x))));  x = x + DropPath(LS2(Mlp(norm2(x))))
    """
    num_heads: int
    mlp_dim: int
    qkv_bias: bool = True
    fused_qkv: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0           # this layer's rate (or, under nn.scan, the max: see DropPath)
    act: str = "gelu"
    norm_layer: str = "layernorm"
    layer_norm_eps: float = 1e-6
    init_values: float | None = None  # layer scale; None = off
    kernel_init: Initializer = dense_init   # of every Dense in the block
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.norm1 = make_norm(self.norm_layer, self.layer_norm_eps, **kw)
        self.attn = Attention(num_heads=self.num_heads, qkv_bias=self.qkv_bias,
                              fused_qkv=self.fused_qkv, attn_dropout=self.attn_dropout,
                              proj_dropout=self.dropout, kernel_init=self.kernel_init, **kw)
        self.norm2 = make_norm(self.norm_layer, self.layer_norm_eps, **kw)
        self.mlp = MlpBlock(hidden_dim=self.mlp_dim, act=self.act, dropout=self.dropout, kernel_init=self.kernel_init, **kw)
        if self.init_values is not None:
            self.ls1 = LayerScale(init_values=self.init_values, param_dtype=self.param_dtype)
            self.ls2 = LayerScale(init_values=self.init_values, param_dtype=self.param_dtype)
        self.dp = DropPath(rate=self.drop_path)

    def __call__(self, x: Array, train: bool = False,
                 drop_path_rate: float | Array | None = None) -> Array:
        y = self.attn(self.norm1(x), train)
        if self.init_values is not None:
            y = self.ls1(y)
        x = x + self.dp(y, train, drop_path_rate)
        y = self.mlp(self.norm2(x), train)
        if self.init_values is not None:
            y = self.ls2(y)
        return x + self.dp(y, train, drop_path_rate)


# ----------------------------------------------------------------------------- position embeddings

def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim): [sin(pos*w_k), cos(pos*w_k)], w_k = 10000^(-k/(dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, cls_token: bool = False) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding in MAE's layout, shape (1, [1+] grid_h*grid_w, dim).

    Tokens are row-major over (h, w).  The first dim/2 channels encode the column (w)
    coordinate, the last dim/2 the row (h); each half is [sin, cos] with
    w_k = 10000^(-k/(dim/4)).  With cls_token a zero row is prepended.  float32 numpy
    (a constant, never a parameter).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}.")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb[None].astype(np.float32)


def torch_bicubic_matrix(n_in: int, n_out: int, scale: float | None = None) -> np.ndarray:
    """(n_out, n_in) weights of torch's bicubic resize (align_corners=False, A=-0.75, edge clamp).

    torch computes source x = (o + 0.5) * scale - 0.5, scale = n_in / n_out, or 1 / scale_factor
    when F.interpolate is given a scale_factor (DINO's +0.1 offset), and mixes the 4 pixels around
    it with Keys' cubic (A = -0.75), clamping indices at the borders; jax.image.resize uses
    A = -0.5 and renormalises at the edges, which differs by ~1e-2.  DINOv2 and CLIP resize
    their position embeddings this way, so parity needs this exact kernel.
    """
    a = -0.75

    def near(t):   # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):    # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    w = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out if scale is None else scale
    for o in range(n_out):
        x = (o + 0.5) * scale - 0.5
        i0 = int(np.floor(x))
        t = x - i0
        coeffs = (far(t + 1), near(t), near(1 - t), far(2 - t))
        for k, c in enumerate(coeffs):
            w[o, min(max(i0 - 1 + k, 0), n_in - 1)] += c
    return w


def resize_pos_embed(posemb: Array, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                     old_grid: tuple[int, int] | None = None, method: str = "bilinear",
                     antialias: bool = False) -> Array:
    """Resize a (1, P + h*w, D) position embedding to (1, P + H*W, D) for a new patch grid.

    The P prefix rows (cls / distillation tokens) are kept as they are; the grid rows are
    interpolated (half-pixel centres, like torch's align_corners=False).  `old_grid`
    defaults to a square grid.  method: "bilinear" (jax.image.resize; antialias=False
    matches torch F.interpolate), "bicubic" (torch's bicubic exactly, see
    `torch_bicubic_matrix`; DINOv2 / CLIP) or "bicubic_dino" (facebookresearch/dino's
    interpolate_pos_encoding: torch's bicubic with scale_factor (n_out + 0.1) / n_in, the offset it
    adds against floating-point error, so the source grid is sampled at n_in / (n_out + 0.1)).
    """
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    n, d = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"pos-emb has {n} grid rows, not a square: pass old_grid=(h, w).")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    grid = grid.reshape(old_grid[0], old_grid[1], d).astype(jnp.float32)
    if method in ("bicubic", "bicubic_dino"):
        wh, ww = (jnp.asarray(torch_bicubic_matrix(
            n, m, n / (m + 0.1) if method == "bicubic_dino" else None), jnp.float32)
            for n, m in zip(old_grid, new_grid))
        grid = jnp.einsum("Hh,hwd,Ww->HWd", wh, grid, ww, precision=jax.lax.Precision.HIGHEST)
    elif method == "bilinear":
        grid = jax.image.resize(grid, (new_grid[0], new_grid[1], d), method=method,
                                antialias=antialias)
    else:
        raise ValueError(f"pos-emb resize method must be 'bilinear', 'bicubic' or 'bicubic_dino', "
                         f"got {method!r}.")
    grid = grid.astype(posemb.dtype)
    return jnp.concatenate([prefix, grid.reshape(1, new_grid[0] * new_grid[1], d)], axis=1)
