"""Shared transformer building blocks (flax.linen); position embeddings are in posemb.py.

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

from vit_jax.models.gelu import gelu

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# MAE / google vit init: xavier_uniform for Linear, zero biases.
dense_init: Initializer = nn.initializers.xavier_uniform()
# MAE inits the patch-embed conv as a Linear on the flattened (p*p*C -> D) weight.
patch_embed_init: Initializer = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)


def flat_dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                     preferred_element_type: Any = None, **kwargs: Any) -> Array:
    """lax.dot_general, with a (..., K) x (K, N) product (a Dense on tokens) done as one 2-D
    matmul on (prod(...), K): XLA:CPU runs the backward of the 3-D form (the kernel's gradient
    contracts batch and tokens together) much slower than the same product on (B * L, K) (an MLP
    at ViT-S/16 b32 shapes, fwd + bwd: 491 against 337 ms; benchmarks/step_parts_vs_torch.py).
    Elsewhere the reshape is free."""
    (lc, rc), (lb, rb) = dimension_numbers
    if (lhs.ndim > 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,)
            and not lb and not rb):
        out = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                                  precision=precision, preferred_element_type=preferred_element_type,
                                  **kwargs)
        return out.reshape(lhs.shape[:-1] + (rhs.shape[1],))
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)


# nn.Dense for (B, L, D) tokens; the same parameters, names and values as nn.Dense
TokenDense = functools.partial(nn.Dense, dot_general=flat_dot_general)


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
    # gelu.gelu: the same function with a cheaper derivative on XLA:CPU (vit_jax/models/gelu.py)
    "gelu": gelu,
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
        dense = functools.partial(TokenDense, use_bias=self.use_bias, dtype=self.dtype,
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
    fused kernel where the backend has one; on the CPU the explicit path instead, which XLA:CPU
    runs 1.5x faster there (fwd + bwd, ViT-S/16 b32 shapes: 139 against 208 ms;
    benchmarks/step_parts_vs_torch.py). Otherwise the explicit path with the softmax in float32;
    it agrees with the fast path to float rounding, so recorded weights are the ones the model uses.
    The explicit path works head-major, (B, H, L, hd): XLA:CPU's batched matmuls want the batch
    axes leading (the token-major einsum took 183 ms there).
    """
    active_dropout = not deterministic and dropout > 0.0
    fast = not bias and not active_dropout and record is None
    if fast and jax.default_backend() != "cpu":
        return jax.nn.dot_product_attention(q, k, v, scale=scale)
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q * scale, k, v))   # q scaled: L x hd, not L x L
    logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh).astype(jnp.float32)
    for term in bias:
        logits = logits + term
    weights = jax.nn.softmax(logits, axis=-1)
    if not fast:
        if record is not None:
            record(weights)
        # Built on every explicit call (a no-op unless active): the caller's auto-named dropouts
        # (Dropout_0, _1, ...) and so their rng streams stay those of the original modules.
        weights = nn.Dropout(dropout, deterministic=not active_dropout)(weights)
    return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), vh), 1, 2)


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
        dense = functools.partial(TokenDense, dtype=self.dtype, param_dtype=self.param_dtype,
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
