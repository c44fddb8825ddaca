"""Vision Transformer (ViT / DeiT / MAE-style encoder) as one flax.linen module.

Call contract (shared by every backbone):
    out, aux = ViT(...).apply(variables, images, train=False, rngs={"dropout": key})
    images: (B, H, W, C) float32, H and W multiples of the patch size (any resolution:
    a learned pos-emb is resized on the fly, a sincos one recomputed).
    out: logits (B, num_classes) float32, or the pooled features (B, D) when num_classes == 0.
    aux: {"encoded": (B, N, D) final tokens after the final norm (class token first),
          "pre_logits": (B, D), "patch_grid": (h, w) python ints}.

DeiT's distillation token (dist_token=True; Touvron et al. 2021): tokens [class, distillation,
patches], a position embedding of 2 + L rows and a second head `head_dist` on the distillation
token. `out` is then always DeiT's inference output, (head(class) + head_dist(distillation)) / 2,
and aux adds "logits_cls" and "logits_dist" (B, K), the two heads alone, which the distillation
objective trains (vit_jax/objectives/distill.py).

Extension point for pre-training methods (MAE, EVA, ...), usable with
`module.apply(variables, x, method=ViT.embed)` or from a parent module (`self.vit.embed(x)`):
    embed(images)          -> (patch tokens (B, L, D) with pos-emb, prefix tokens (B, P, D) with
                              their pos | None: the class token [, the distillation token])
    encode(tokens, train)  -> (B, N, D): dropout, [norm_pre], blocks, final norm
so a method can drop / replace / mask patch tokens between the two.

Parameter tree (unscanned):  embedding{kernel (p,p,C,D), bias}, cls_token (1,1,D), [dist_token (1,1,D)],
pos_embed (1,P+L,D), blocks_0..blocks_{depth-1} (see layers.Block), norm, fc_norm, head, [head_dist].
With scan=True the blocks are one "blocks" subtree whose leaves have a leading depth
axis; `scan_params` / `unscan_params` convert between the two layouts.

Registered names (at import): vit_/deit_{size}_patch{p}_{img} for every size in VIT_SIZES,
e.g. "vit_small_patch8_64", deit_{size}_distilled_patch{p}_{img} (with the distillation token),
plus the timm names listed at the bottom.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.torch_init import default_bias, default_kernel, trunc_normal, trunc_normal_002
from vit_jax.models.layers import (Block, Dtype, check_images, dense_init, make_norm, pair,
                                   patch_embed_init)
from vit_jax.models.posemb import resize_pos_embed, sincos_2d
from vit_jax.models.registry import register, register_pattern

Array = jax.Array

_POOLS = ("token", "gap")
_POSEMBS = ("learn", "sincos2d", "none")


def _batch_sharded(x: Array) -> Array:
    """x (B, ...) constrained to rows over the mesh's data and fsdp axes when the step is traced
    under a mesh (jax.set_mesh); unchanged otherwise. Inside a scan loop XLA's partitioner does not
    carry the batch sharding into the loop on its own: without this it gathered the activations
    over fsdp in every block (ViT-B/16 on 8x8 devices: 17.7 GiB of collectives a step, not 0.3)."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    if mesh.empty or not axes or x.shape[0] % int(np.prod([mesh.shape[a] for a in axes])):
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(axes))


class _ScanBlock(Block):
    """Block with the (carry, x) -> (carry, y) signature nn.scan wants; x = this layer's drop-path rate."""

    def __call__(self, x: Array, rate: Array, train: bool = False) -> tuple[Array, None]:  # type: ignore[override]
        return _batch_sharded(super().__call__(_batch_sharded(x), train, rate)), None


class ViT(nn.Module):
    """Vision Transformer.  See the module docstring for the call contract."""
    num_classes: int = 1000           # 0: no head, `out` is the pooled features
    patch_size: int | tuple[int, int] = 16
    width: int = 768                  # hidden size D
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int | None = None        # None: int(width * mlp_ratio)
    mlp_ratio: float = 4.0
    image_size: int | tuple[int, int] = 224   # sizes the learned pos-emb
    in_channels: int = 3
    pool: str = "token"               # "token" (class token) | "gap" (mean of patch tokens)
    class_token: bool = True
    dist_token: bool = False          # DeiT's distillation token and head_dist (see module docstring)
    fc_norm: bool | None = None       # None: True iff pool == "gap" (MAE fine-tuning)
    final_norm: bool | None = None    # norm on all tokens; None: off iff pool == "gap" with fc_norm
                                      # (CLIP: False, its post_layernorm is fc_norm on the cls token)
    posemb: str = "learn"             # "learn" | "sincos2d" (fixed, MAE layout) | "none"
    # std of the learned pos-emb at init. 0.02 (timm, DINO) is small beside the patch embedding's
    # output (about 0.5 at xavier init). Then a random ViT's class token is a bag of patches, organised by
    # ink rather than shape (benchmarks/neighbour_attributes.py). About 1 lets position in.
    posemb_init_std: float = 0.02
    # resizing a learned pos-emb: "bilinear" | "bicubic" (torch's) | "bicubic_dino" (DINO's +0.1)
    posemb_interp: str = "bilinear"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path_rate: float = 0.0       # linearly increasing 0 -> rate over depth (timm)
    qkv_bias: bool = True
    fused_qkv: bool = False           # one "qkv" Dense instead of query/key/value
    patch_bias: bool = True           # CLIP's patch conv has no bias
    pre_norm: bool = False            # CLIP's ln_pre before the blocks ("norm_pre")
    norm_layer: str = "layernorm"     # "layernorm" | "rmsnorm"
    layer_norm_eps: float = 1e-6
    act: str = "gelu"                 # see layers.get_activation
    init_values: float | None = None  # layer scale (DINOv2); None = off
    head_init_std: float = 0.0        # 0: zero-init head (google ViT); MAE fine-tune uses 2e-5
    weight_init: str = "mae"          # "mae" (xavier, as MAE / big_vision) | "dino" (DINO / DeiT)
    head_bias: bool = True            # CLIP's visual projection has no bias
    dtype: Dtype = jnp.float32        # compute dtype; params stay param_dtype
    param_dtype: Dtype = jnp.float32
    remat: bool = False               # rematerialise each block in the backward pass
    scan: bool = False                # nn.scan over blocks (stacked params, faster compile)

    def __post_init__(self) -> None:
        # Validate static config at construction, so create(...) fails early and clearly.
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}; "
                             "choose num_heads that divides width (e.g. width // 64).")
        if self.posemb_interp not in ("bilinear", "bicubic", "bicubic_dino"):
            raise ValueError(f"posemb_interp must be 'bilinear', 'bicubic' or 'bicubic_dino', "
                             f"got {self.posemb_interp!r}.")
        if self.pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {self.pool!r}.")
        if self.weight_init not in ("mae", "dino"):
            raise ValueError(f"weight_init must be 'mae' (xavier Linear kernels) or 'dino' (trunc-normal "
                             f"0.02, torch's default patch conv), got {self.weight_init!r}.")
        if self.posemb not in _POSEMBS:
            raise ValueError(f"posemb must be one of {_POSEMBS}, got {self.posemb!r}.")
        if self.dist_token and not (self.class_token and self.pool == "token"):
            raise ValueError("dist_token=True needs class_token=True and pool='token' (DeiT: the class "
                             "head reads the class token, head_dist the distillation token after it); "
                             f"got class_token={self.class_token}, pool={self.pool!r}.")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool='token' needs class_token=True; use pool='gap' without a class token.")
        (ih, iw), (ph, pw) = pair(self.image_size), pair(self.patch_size)
        if ih % ph or iw % pw:
            raise ValueError(f"image_size {(ih, iw)} is not divisible by patch_size {(ph, pw)}; "
                             "choose an image_size that is a multiple of the patch size.")
        super().__post_init__()

    # ------------------------------------------------------------------ derived config
    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.dist_token)

    @property
    def base_grid(self) -> tuple[int, int]:
        """Patch grid (h, w) of `image_size`, the grid the learned pos-emb is stored at."""
        (ih, iw), (ph, pw) = pair(self.image_size), pair(self.patch_size)
        return ih // ph, iw // pw

    @property
    def _use_fc_norm(self) -> bool:
        return self.pool == "gap" if self.fc_norm is None else bool(self.fc_norm)

    @property
    def _final_norm(self) -> bool:
        if self.final_norm is not None:
            return bool(self.final_norm)
        # MAE global_pool: the token norm is replaced by fc_norm on the pooled features.
        return not (self.pool == "gap" and self._use_fc_norm)

    def _dp_rates(self) -> np.ndarray:
        return np.linspace(0.0, self.drop_path_rate, self.depth)

    # ------------------------------------------------------------------ modules
    def setup(self) -> None:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d, p = self.width, pair(self.patch_size)
        if self.weight_init == "dino":   # facebookresearch/dino's: its _init_weights leaves the conv to torch
            dense, token = trunc_normal_002, trunc_normal_002
            conv_kw = dict(kernel_init=default_kernel,
                           bias_init=default_bias(p[0] * p[1] * self.in_channels))
        else:
            dense, token, conv_kw = dense_init, nn.initializers.normal(0.02), dict(kernel_init=patch_embed_init)
        self.embedding = nn.Conv(d, p, strides=p, padding="VALID", use_bias=self.patch_bias,
                                 **conv_kw, **kw)
        if self.class_token:
            self.cls_token = self.param("cls_token", token, (1, 1, d), self.param_dtype)
        if self.dist_token:
            self.distillation_token = self.param("dist_token", token, (1, 1, d), self.param_dtype)
        if self.posemb == "learn":
            gh, gw = self.base_grid
            std = self.posemb_init_std   # as `token`'s family draws it, at this std
            pos_init = trunc_normal(std) if self.weight_init == "dino" else nn.initializers.normal(std)
            self.pos_embed = self.param("pos_embed", pos_init,
                                        (1, self.num_prefix_tokens + gh * gw, d), self.param_dtype)
        self.pos_drop = nn.Dropout(self.dropout)
        if self.pre_norm:
            self.norm_pre = make_norm(self.norm_layer, self.layer_norm_eps, **kw)

        block_kw = dict(num_heads=self.num_heads,
                        mlp_dim=self.mlp_dim or int(self.width * self.mlp_ratio),
                        qkv_bias=self.qkv_bias, fused_qkv=self.fused_qkv, dropout=self.dropout,
                        attn_dropout=self.attn_dropout, act=self.act, norm_layer=self.norm_layer,
                        layer_norm_eps=self.layer_norm_eps, init_values=self.init_values,
                        kernel_init=dense, **kw)
        if self.scan:
            cls = _ScanBlock
            if self.remat:  # static_argnums counts self: (self, x, rate, train)
                cls = nn.remat(cls, prevent_cse=False, static_argnums=(3,))
            self.blocks = nn.scan(
                cls, variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast), length=self.depth,
            )(drop_path=self.drop_path_rate, **block_kw)
        else:
            cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
            self.blocks = [cls(drop_path=float(r), **block_kw) for r in self._dp_rates()]

        if self._final_norm:
            self.norm = make_norm(self.norm_layer, self.layer_norm_eps, **kw)
        if self._use_fc_norm:
            self.fc_norm_layer = make_norm(self.norm_layer, self.layer_norm_eps, name="fc_norm", **kw)
        if self.num_classes > 0:
            init = (nn.initializers.zeros if self.head_init_std == 0.0
                    else nn.initializers.normal(self.head_init_std))
            self.head = nn.Dense(self.num_classes, kernel_init=init, use_bias=self.head_bias, **kw)
            if self.dist_token:
                self.head_dist = nn.Dense(self.num_classes, kernel_init=init, use_bias=self.head_bias,
                                          **kw)

    # ------------------------------------------------------------------ pieces
    def _check_images(self, images: Array) -> tuple[int, int]:
        """Validate NHWC input (B, H, W, C); returns the patch grid (h, w).  (MAE / EVA call it.)"""
        return check_images(images, self.in_channels, self.patch_size, model="ViT")

    def pos_embed_for(self, grid: tuple[int, int]) -> Array:
        """Position embedding (1, P + h*w, D) for a patch grid; prefix (cls, dist) rows first."""
        d, prefix = self.width, self.num_prefix_tokens
        if self.posemb == "learn":
            return resize_pos_embed(self.pos_embed, grid, prefix, old_grid=self.base_grid,
                                    method=self.posemb_interp)
        if self.posemb == "sincos2d":
            table = sincos_2d(grid[0], grid[1], d)   # zero rows for the prefix tokens, as MAE's cls
            return jnp.asarray(np.pad(table, ((0, 0), (prefix, 0), (0, 0))))
        return jnp.zeros((1, prefix + grid[0] * grid[1], d), jnp.float32)

    def embed(self, images: Array, with_pos: bool = True, patch_mask: Array | None = None,
              mask_token: Array | None = None) -> tuple[Array, Array | None]:
        """images (B, H, W, C) -> (patch tokens (B, h*w, D), prefix tokens (B, P, D) or None).

        The prefix is the class token, then the distillation token when dist_token=True (P = 2).

        Both carry their position embedding unless with_pos=False (then add
        `pos_embed_for(grid)` yourself). patch_mask (B, h*w) bool with mask_token (1, 1, D): the
        embeddings of masked patches are replaced by the mask token before the position
        embedding is added (BEiT, iBOT, EVA). Tokens are row-major over the patch grid, in the
        compute dtype.
        """
        gh, gw = self._check_images(images)
        x = self.embedding(images.astype(self.dtype))
        b, d = x.shape[0], x.shape[-1]
        x = x.reshape(b, gh * gw, d)
        if patch_mask is not None:
            if mask_token is None or patch_mask.shape != (b, gh * gw):
                raise ValueError(f"patch_mask {getattr(patch_mask, 'shape', None)} needs a mask_token and "
                                 f"the shape (B, h*w) = {(b, gh * gw)} of these images' patches")
            w = patch_mask[..., None].astype(x.dtype)
            x = x * (1 - w) + mask_token.astype(x.dtype) * w
        pos = self.pos_embed_for((gh, gw)).astype(x.dtype) if with_pos else None
        if pos is not None:
            x = x + pos[:, self.num_prefix_tokens:]
        prefix = [self.cls_token] if self.class_token else []
        prefix += [self.distillation_token] if self.dist_token else []
        if not prefix:
            return x, None
        cls = jnp.broadcast_to(jnp.concatenate(prefix, axis=1).astype(x.dtype), (b, len(prefix), d))
        if pos is not None:
            cls = cls + pos[:, :len(prefix)]
        return x, cls

    def encode(self, tokens: Array, train: bool = False) -> Array:
        """(B, N, D) tokens (cls first, pos-emb added) -> (B, N, D) encoded tokens.

        Dropout, optional norm_pre, the blocks, then the final norm (skipped when
        pool == "gap" with fc_norm, as in MAE fine-tuning).
        """
        x = self.pos_drop(tokens, deterministic=not train)
        if self.pre_norm:
            x = self.norm_pre(x)
        if self.scan:
            x, _ = self.blocks(x, jnp.asarray(self._dp_rates(), jnp.float32), train)
        else:
            for blk in self.blocks:
                x = blk(x, train)
        if self._final_norm:
            x = self.norm(x)
        return x

    def __call__(self, images: Array, train: bool = False, patch_mask: Array | None = None,
                 mask_token: Array | None = None) -> tuple[Array, dict[str, Any]]:
        """images (B, H, W, C) -> (logits (B, K) | features (B, D), aux); see module docstring.
        patch_mask / mask_token: masked patches, as in `embed` (iBOT's masked student)."""
        grid = self._check_images(images)
        tokens, cls = self.embed(images, patch_mask=patch_mask, mask_token=mask_token)
        x = tokens if cls is None else jnp.concatenate([cls, tokens], axis=1)
        x = self.encode(x, train)
        if self.pool == "token":
            pooled = x[:, 0]
        else:
            pooled = x[:, self.num_prefix_tokens:].mean(axis=1)
        if self._use_fc_norm:
            pooled = self.fc_norm_layer(pooled)
        out = self.head(pooled) if self.num_classes > 0 else pooled
        aux = {"encoded": x, "pre_logits": pooled, "patch_grid": grid}
        if self.dist_token and self.num_classes > 0:   # DeiT: both heads; out = their average
            dist = x[:, 1]
            dist = self.head_dist(self.fc_norm_layer(dist) if self._use_fc_norm else dist)
            aux.update(logits_cls=out.astype(jnp.float32), logits_dist=dist.astype(jnp.float32))
            out = (out + dist) / 2
        return out.astype(jnp.float32), aux


# ---------------------------------------------------------------------- scan <-> unscanned params

def scan_params(params: dict, depth: int) -> dict:
    """Unscanned params (blocks_0..blocks_{n-1}) -> scanned layout ("blocks", leading depth axis)."""
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    layers = [params[f"blocks_{i}"] for i in range(depth)]
    out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def unscan_params(params: dict) -> dict:
    """Scanned params ("blocks" with a leading depth axis) -> blocks_0..blocks_{n-1}."""
    out = {k: v for k, v in params.items() if k != "blocks"}
    depth = jax.tree.leaves(params["blocks"])[0].shape[0]
    for i in range(depth):
        out[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
    return out


# ---------------------------------------------------------------------- registered names

# size -> (width, depth, num_heads, mlp_dim); None = 4 * width, so a width override scales the MLP.
VIT_SIZES: dict[str, tuple[int, int, int, int | None]] = {
    "tiny": (192, 12, 3, None),
    "small": (384, 12, 6, None),
    "base": (768, 12, 12, None),
    "large": (1024, 24, 16, None),
    "huge": (1280, 32, 16, None),
    "giant": (1408, 40, 16, 6144),  # ViT-g/14: not 4x
}


def vit(size: str, patch: int, image_size: int, **kw: Any) -> ViT:
    """A standard ViT (1000 classes, class token, learned pos-emb) of a named size."""
    width, depth, heads, mlp = VIT_SIZES[size]
    return ViT(patch_size=patch, width=width, depth=depth, num_heads=heads, mlp_dim=mlp,
               image_size=image_size, num_classes=1000, **kw)


register_pattern(r"deit_(" + "|".join(VIT_SIZES) + r")_distilled_patch(\d+)_(\d+)",
                 lambda m: vit(m.group(1), int(m.group(2)), int(m.group(3)), dist_token=True),
                 hint=f"deit_{{size}}_distilled_patch{{p}}_{{img}} (size in {'/'.join(VIT_SIZES)})")
register_pattern(r"(?:vit|deit)_(" + "|".join(VIT_SIZES) + r")_patch(\d+)_(\d+)",
                 lambda m: vit(m.group(1), int(m.group(2)), int(m.group(3))),
                 hint=f"vit_{{size}}_patch{{p}}_{{img}} (size in {'/'.join(VIT_SIZES)})")

for _name, _args in {
    "vit_tiny_patch16_224": ("tiny", 16, 224),
    "vit_small_patch16_224": ("small", 16, 224),
    "vit_small_patch32_224": ("small", 32, 224),
    "vit_base_patch16_224": ("base", 16, 224),
    "vit_base_patch32_224": ("base", 32, 224),
    "vit_base_patch16_384": ("base", 16, 384),
    "vit_large_patch16_224": ("large", 16, 224),
    "vit_large_patch14_224": ("large", 14, 224),
    "vit_huge_patch14_224": ("huge", 14, 224),
    "vit_giant_patch14_224": ("giant", 14, 224),
    # DeiT (non-distilled) is the same architecture as ViT-Ti/S/B at 224.
    "deit_tiny_patch16_224": ("tiny", 16, 224),
    "deit_small_patch16_224": ("small", 16, 224),
    "deit_base_patch16_224": ("base", 16, 224),
}.items():
    register(_name, functools.partial(vit, *_args))
# DeiT with the distillation token (facebookresearch/deit models.py: DistilledVisionTransformer).
for _size in ("tiny", "small", "base"):
    register(f"deit_{_size}_distilled_patch16_224", functools.partial(vit, _size, 16, 224, dist_token=True))
