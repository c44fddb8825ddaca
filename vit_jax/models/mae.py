"""The MAE model (He et al. 2021): masking, the encoder-decoder module and the masked pixel MSE.

Facts followed (see /work/shared/REFERENCE.md, facebookresearch/mae models_mae.py):
  * patchify: (B, H, W, C) -> (B, L, p*p*C), within a patch row, column, channel (channel fastest).
  * masking: noise (B, L) ~ U[0, 1); ids_shuffle = argsort(noise) (smallest kept);
    ids_restore = argsort(ids_shuffle); keep the first int(L * (1 - mask_ratio));
    mask = 1 for removed patches, in the original patch order.
  * encoder (a ViT, class token, fixed 2-D sincos pos-emb) sees the visible patches only.
  * decoder: Linear(D -> Dd), mask tokens appended and unshuffled, fixed sincos pos-emb,
    blocks, LayerNorm, Linear(Dd -> p*p*C), class token dropped.
  * loss: per-patch MSE, mean over masked patches only; norm_pix_loss normalises each target
    patch with its mean and UNBIASED variance (+1e-6).

Parameter tree of `MAE` (a contract: the Hugging Face converter maps onto these names):
    encoder/{embedding, cls_token, blocks_0..blocks_{depth-1}, norm}   (a vit.ViT, no pos_embed)
    decoder_embed{kernel (D, Dd), bias}
    mask_token (1, 1, Dd)
    decoder_blocks_0..decoder_blocks_{decoder_depth-1}   (layers.Block: norm1, attn, norm2, mlp)
    decoder_norm{scale, bias}
    decoder_pred{kernel (Dd, p*p*C), bias}
Both position embeddings are fixed sincos constants, not parameters.

The training objective (config.mae, evaluation, pictures) is vit_jax/objectives/mae.py.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vit_jax import models
from vit_jax.models.layers import Block, Dtype, TokenDense, dense_init, make_norm, pair
from vit_jax.models.posemb import sincos_2d
from vit_jax.models.torch_init import default_bias
from vit_jax.models.vit import ViT

Array = jax.Array

NORM_PIX_EPS = 1e-6   # models_mae.py forward_loss: (target - mean) / (var + 1e-6) ** 0.5


# ---------------------------------------------------------------------------- pure functions

def patchify(images: Array, p: int | Sequence[int]) -> Array:
    """(B, H, W, C) -> (B, L, ph*pw*C), L = (H/ph)*(W/pw) row-major; within a patch the order
    is row, column, channel (channel fastest), as MAE's patchify.  Works on numpy arrays too."""
    b, h, w, c = images.shape
    ph, pw = pair(p)
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {ph}x{pw}; "
                         "resize or crop the images to a multiple of the patch size.")
    gh, gw = h // ph, w // pw
    x = images.reshape(b, gh, ph, gw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * gw, ph * pw * c)


def unpatchify(x: Array, p: int | Sequence[int], grid_hw: Sequence[int], channels: int) -> Array:
    """Inverse of `patchify`: (B, gh*gw, ph*pw*C) -> (B, gh*ph, gw*pw, C)."""
    ph, pw = pair(p)
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    b, l, n = x.shape
    if l != gh * gw or n != ph * pw * channels:
        raise ValueError(f"patches of shape {x.shape} do not match a {gh}x{gw} grid of "
                         f"{ph}x{pw}x{channels} patches.")
    x = x.reshape(b, gh, gw, ph, pw, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * ph, gw * pw, channels)


def check_mask_ratio(mask_ratio: float, num_patches: int | None = None) -> int:
    """Validates mask_ratio; returns the number of visible patches int(L * (1 - ratio)) (0 if L is None)."""
    if not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1) (MAE uses 0.75); "
                         "set mae.mask_ratio accordingly.")
    if num_patches is None:
        return 0
    # The same Python float expression as MAE / HF, so the count agrees exactly
    # (e.g. int(10 * (1 - 0.6)) == 3, not 4).
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps int({num_patches} * (1 - {mask_ratio})) = 0 "
                         f"of {num_patches} patches: the encoder would see nothing. Lower mask_ratio "
                         f"below {1 - 1 / num_patches:.4f}, or use smaller patches / larger images.")
    return keep


def random_masking(x: Array, noise: Array, mask_ratio: float) -> tuple[Array, Array, Array]:
    """MAE per-sample random masking by argsort of noise.

    x: (B, L, D) tokens; noise: (B, L), smaller noise = kept.
    Returns (visible (B, K, D) in shuffled order, mask (B, L) float32 1 = removed in the
    original order, ids_restore (B, L) int32), K = int(L * (1 - mask_ratio)).
    """
    b, l = x.shape[:2]
    if noise.shape != (b, l):
        raise ValueError(f"noise has shape {noise.shape}, expected (batch, num_patches) = {(b, l)}.")
    keep = check_mask_ratio(mask_ratio, l)
    ids_shuffle = jnp.argsort(noise, axis=1, stable=True)
    ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True).astype(jnp.int32)
    visible = jnp.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
    # A patch is removed iff its rank in the shuffled order is >= keep (== MAE's unshuffled mask).
    mask = (ids_restore >= keep).astype(jnp.float32)
    return visible, mask, ids_restore


def normalize_patches(target: Array, eps: float = NORM_PIX_EPS) -> Array:
    """Per-patch (t - mean) / sqrt(var + eps) with the UNBIASED variance (torch .var default)."""
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, ddof=1, keepdims=True)
    return (target - mean) / jnp.sqrt(var + eps)


def per_patch_loss(pred: Array, target_patches: Array, norm_pix_loss: bool = False) -> Array:
    """(B, L, n) pred and target -> (B, L) mean squared error per patch (float32)."""
    pred = pred.astype(jnp.float32)
    target = target_patches.astype(jnp.float32)
    if norm_pix_loss:
        target = normalize_patches(target)
    return jnp.mean(jnp.square(pred - target), axis=-1)


def masked_pixel_loss(pred: Array, target_patches: Array, mask: Array,
                      norm_pix_loss: bool = False) -> Array:
    """MAE loss: per-patch MSE averaged over masked patches (mask == 1) only.  Scalar float32.

    The denominator is clamped at 1 so mask_ratio=0 (nothing masked) gives 0, not NaN.
    """
    loss = per_patch_loss(pred, target_patches, norm_pix_loss)
    mask = mask.astype(jnp.float32)
    return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def per_example_masked_loss(pred: Array, target_patches: Array, mask: Array,
                            norm_pix_loss: bool = False) -> Array:
    """(B,) masked pixel loss of each example (each has the same number of masked patches,
    so their mean equals `masked_pixel_loss`)."""
    loss = per_patch_loss(pred, target_patches, norm_pix_loss)
    mask = mask.astype(jnp.float32)
    return jnp.sum(loss * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def mae_qkv_init(params: Any, rng: jax.Array | None = None) -> Any:
    """Rescales separate query/key/value kernels to MAE's fused-qkv xavier distribution.

    MAE initialises one fused Linear(D, 3D) with xavier_uniform (bound sqrt(6 / (D + 3D)));
    layers.Attention draws three Linear(D, D) (bound sqrt(6 / 2D)).  A slice of a fused
    uniform matrix is uniform with the fused bound, so scaling each separate kernel by
    sqrt((D_in + D_out) / (D_in + 3 D_out)) gives exactly MAE's distribution.  Kernels with a
    leading (scanned) depth axis are handled; fused "qkv" kernels are left alone.  `rng` is unused.
    """
    del rng
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, v in flat.items():
        if len(path) >= 3 and path[-1] == "kernel" and path[-2] in ("query", "key", "value") \
                and path[-3] == "attn":
            d_in, d_out = v.shape[-2], v.shape[-1]
            v = v * jnp.asarray(math.sqrt((d_in + d_out) / (d_in + 3 * d_out)), v.dtype)
        out[path] = v
    return traverse_util.unflatten_dict(out)


def mae_init(params: Any, rng: jax.Array) -> Any:
    """MAE's initialize_weights where it differs from our layers' inits: the fused-qkv kernels
    (`mae_qkv_init`) and the patch embedding's bias, which MAE leaves at torch's Conv2d default,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = p*p*C (ours starts at zero). Handles the
    encoder's ("encoder", "embedding", "bias") leaf (absent with patch_bias=False); returns a new
    tree."""
    params = mae_qkv_init(params)
    bias = params["encoder"]["embedding"].get("bias")
    if bias is None:
        return params
    fan_in = int(np.prod(params["encoder"]["embedding"]["kernel"].shape[:-1]))
    drawn = default_bias(fan_in)(rng, bias.shape, bias.dtype)
    embedding = dict(params["encoder"]["embedding"], bias=drawn)
    return dict(params, encoder=dict(params["encoder"], embedding=embedding))


# ---------------------------------------------------------------------------- the module

class MAE(nn.Module):
    """Masked autoencoder: a ViT encoder on the visible patches plus a light decoder.

    Call: `module.apply(variables, images, noise=None, train=False, rngs={"masking": key})`
        images: (B, H, W, C) float, H and W multiples of the patch size.
        noise: (B, L) U[0, 1) masking noise; None draws it from the "masking" rng.
        -> {"loss": () float32, "pred": (B, L, p*p*C) float32, "mask": (B, L) 1 = removed,
            "ids_restore": (B, L) int32}
    Equal to HF ViTMAEForPreTraining(pixel_values, noise=noise) given the same weights.

    `encoder` is a vit.ViT built with num_classes=0 and posemb="sincos2d" (see `build_mae`);
    its own fields (size, patch, image size, channels, layer_norm_eps, act, qkv_bias, dtype)
    configure the encoder.  The decoder_* fields left None take the encoder's value, as in HF
    where one config value serves both.  `MAE.init` gives xavier Dense / patch-embed, N(0, .02)
    cls and mask tokens; apply `mae_init` to the params for MAE's exact init (fused qkv, patch bias).
    """
    encoder: ViT
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    decoder_mlp_dim: int | None = None       # None: int(decoder_width * decoder_mlp_ratio)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    decoder_layer_norm_eps: float | None = None  # None: encoder.layer_norm_eps (HF uses 1e-12)
    decoder_act: str | None = None           # None: encoder.act
    decoder_qkv_bias: bool | None = None     # None: encoder.qkv_bias
    decoder_dtype: Dtype | None = None       # compute dtype; None: encoder.dtype

    def __post_init__(self) -> None:
        enc = self.encoder
        fix = ("build the encoder with vit_jax.models.create(name, num_classes=0, posemb='sincos2d') "
               "or use vit_jax.models.mae.build_mae(name)")
        if not isinstance(enc, ViT):
            raise ValueError(f"MAE.encoder must be a vit_jax ViT, got {type(enc).__name__}; {fix}.")
        if enc.num_classes != 0:
            raise ValueError(f"MAE.encoder has num_classes={enc.num_classes}; it must be 0 (no head): {fix}.")
        if enc.posemb != "sincos2d":
            raise ValueError(f"MAE.encoder has posemb={enc.posemb!r}; MAE uses the fixed 'sincos2d': {fix}.")
        if not enc.class_token or enc.pool != "token" or enc.fc_norm:
            raise ValueError("MAE.encoder needs class_token=True, pool='token' and no fc_norm "
                             f"(got class_token={enc.class_token}, pool={enc.pool!r}, "
                             f"fc_norm={enc.fc_norm}); {fix}.")
        if self.decoder_width < 1 or self.decoder_heads < 1:
            raise ValueError(f"decoder_width={self.decoder_width} and decoder_heads={self.decoder_heads} "
                             "must be >= 1 (MAE: 512 and 16).")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"decoder_width {self.decoder_width} is not divisible by decoder_heads "
                             f"{self.decoder_heads}; choose decoder_heads dividing decoder_width.")
        if self.decoder_width % 4:
            raise ValueError(f"decoder_width {self.decoder_width} must be divisible by 4 "
                             "(2-D sincos position embedding).")
        if self.decoder_depth < 0:
            raise ValueError(f"decoder_depth={self.decoder_depth} must be >= 0.")
        gh, gw = enc.base_grid
        check_mask_ratio(self.mask_ratio, gh * gw)
        ph, pw = pair(enc.patch_size)
        if self.norm_pix_loss and ph * pw * enc.in_channels < 2:
            raise ValueError("norm_pix_loss needs at least 2 values per patch (unbiased variance); "
                             "use a larger patch or norm_pix_loss=False.")
        super().__post_init__()

    # ------------------------------------------------------------------ derived config
    @property
    def patch_size(self) -> tuple[int, int]:
        return pair(self.encoder.patch_size)

    @property
    def patch_dim(self) -> int:
        ph, pw = self.patch_size
        return ph * pw * self.encoder.in_channels

    def _dec(self, name: str) -> Any:
        own = getattr(self, f"decoder_{name}")
        return own if own is not None else getattr(self.encoder, name)

    # ------------------------------------------------------------------ modules
    def setup(self) -> None:
        dtype = self._dec("dtype")
        kw = dict(dtype=dtype, param_dtype=self.encoder.param_dtype)
        dd = self.decoder_width
        self.decoder_embed = TokenDense(dd, kernel_init=dense_init, **kw)
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, dd),
                                     self.encoder.param_dtype)
        block = nn.remat(Block, static_argnums=(2,)) if self.encoder.remat else Block
        # Same Block (and so the same internal names) as the encoder's blocks.
        self.decoder_blocks = [
            block(num_heads=self.decoder_heads,
                  mlp_dim=self.decoder_mlp_dim or int(dd * self.decoder_mlp_ratio),
                  qkv_bias=self._dec("qkv_bias"), fused_qkv=self.encoder.fused_qkv,
                  act=self._dec("act"), norm_layer=self.encoder.norm_layer,
                  layer_norm_eps=self._dec("layer_norm_eps"), **kw)
            for _ in range(self.decoder_depth)]
        self.decoder_norm = make_norm(self.encoder.norm_layer, self._dec("layer_norm_eps"), **kw)
        self.decoder_pred = TokenDense(self.patch_dim, kernel_init=dense_init, **kw)

    # ------------------------------------------------------------------ pieces
    def forward_encoder(self, images: Array, noise: Array, train: bool = False
                        ) -> tuple[Array, Array, Array]:
        """images (B, H, W, C), noise (B, L) -> (latent (B, 1+K, D), mask (B, L), ids_restore (B, L))."""
        tokens, cls = self.encoder.embed(images)           # pos-emb added to both
        visible, mask, ids_restore = random_masking(tokens, noise, self.mask_ratio)
        x = jnp.concatenate([cls, visible], axis=1)
        return self.encoder.encode(x, train), mask, ids_restore

    def forward_decoder(self, latent: Array, ids_restore: Array, grid: tuple[int, int],
                        train: bool = False) -> Array:
        """latent (B, 1+K, D), ids_restore (B, L) -> pred (B, L, p*p*C) float32."""
        x = self.decoder_embed(latent)
        b, n, dd = x.shape
        num_masked = ids_restore.shape[1] - (n - 1)
        mask_tokens = jnp.broadcast_to(self.mask_token.astype(x.dtype), (b, num_masked, dd))
        patches = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)          # shuffled order
        patches = jnp.take_along_axis(patches, ids_restore[:, :, None], axis=1)  # original order
        x = jnp.concatenate([x[:, :1], patches], axis=1)
        x = x + jnp.asarray(sincos_2d(grid[0], grid[1], dd, cls_token=True), x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x, train)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:].astype(jnp.float32)

    def __call__(self, images: Array, noise: Array | None = None, train: bool = False
                 ) -> dict[str, Array]:
        """See the class docstring."""
        grid = self.encoder._check_images(images)
        b, num_patches = images.shape[0], grid[0] * grid[1]
        if noise is None:
            noise = jax.random.uniform(self.make_rng("masking"), (b, num_patches))
        latent, mask, ids_restore = self.forward_encoder(images, noise, train)
        pred = self.forward_decoder(latent, ids_restore, grid, train)
        target = patchify(images, self.patch_size)
        loss = masked_pixel_loss(pred, target, mask, self.norm_pix_loss)
        return {"loss": loss, "pred": pred, "mask": mask, "ids_restore": ids_restore}


def build_mae(model_name: str = "vit_base_patch16_224", encoder_overrides: dict | None = None,
              **fields: Any) -> MAE:
    """MAE with a registry encoder: `build_mae("vit_large_patch16_224", dict(image_size=32), mask_ratio=.6)`.

    The encoder gets num_classes=0 and posemb="sincos2d" (the MAE encoder); `fields` are MAE's.
    """
    overrides = dict(encoder_overrides or {})
    overrides.setdefault("num_classes", 0)
    overrides.setdefault("posemb", "sincos2d")
    return MAE(encoder=models.create(model_name, **overrides), **fields)
