"""CIFAR-style ResNets (He et al. 2016): the CNN anchor of every small-data table, and DeiT's teacher.

Call contract (shared by every backbone):
    out, aux = ResNet(...).apply(variables, images, train=False)
    train=True normalises with batch statistics and updates the running averages:
    `apply(variables, x, train=True, mutable=["batch_stats"])` -> ((out, aux), {"batch_stats": ...}).
    images: (B, H, W, C) float32, any size (ValueError for a wrong layout or channel count).
    out: logits (B, num_classes) float32, or the pooled features (B, C) when num_classes == 0
         (global average of the last stage's map after its ReLU).
    aux: {"encoded": (B, h*w, C) the last stage's map as tokens, "stages": [(B, h_i, w_i, C_i)] each
          stage's output, "pre_logits": (B, C)}.

Architecture: a 3x3 stem conv (no bias) -> BatchNorm -> ReLU (no max-pool: 32-px inputs), then
stages of basic blocks [conv3x3 (stride s) -> BN -> ReLU -> conv3x3 -> BN] + shortcut -> ReLU, the
first block of every stage after the first at stride 2; global average pooling; a linear head.
Shortcut "A" (the paper's CIFAR ResNets): identity, subsampled by 2 and zero-padded in channels when
the shape changes (no parameters). "B": a 1x1 conv (no bias) + BN projection where the shape changes
(the CIFAR ResNet-18 of the CCT / Gani et al. tables).
Init: convs He-normal (fan_out, gain sqrt 2: torchvision's), BatchNorm scale 1 bias 0, the head
Dense torch-default uniform(+-1/sqrt(fan_in)) for its weight and bias.

Registered names and exact parameter counts (10 classes, 3 channels):
    resnet20_cifar   depths 3-3-3, widths 16-32-64, shortcut A         269,722
    resnet56_cifar   depths 9-9-9, widths 16-32-64, shortcut A         853,018
    resnet18_cifar   depths 2-2-2-2, widths 64-128-256-512, shortcut B  11,173,962
    resnet_mnist     depths 2-2-2, widths 32-64-128, shortcut B, 1 channel: sized for 28-px digits
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.batch_norm import BatchNorm
from vit_jax.models.layers import Dtype, check_images
from vit_jax.models.registry import register
from vit_jax.models.torch_init import default_bias, default_kernel

Array = jax.Array

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module, kw_only=True):
    """(B, H, W, C_in) -> (B, H / stride, W / stride, width)."""
    width: int
    stride: int = 1
    shortcut: str = "A"
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        bn = functools.partial(BatchNorm, momentum=self.bn_momentum, dtype=self.dtype,
                               param_dtype=self.param_dtype)
        s = self.stride
        y = conv(self.width, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(bn(name="bn1")(y, train))
        y = conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = bn(name="bn2")(y, train)
        if s != 1 or x.shape[-1] != self.width:
            if self.shortcut == "A":   # subsample, then zero channels on both sides (no parameters)
                x = x[:, ::s, ::s, :]
                extra = self.width - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                x = conv(self.width, (1, 1), strides=(s, s), padding="VALID", name="proj_conv")(x)
                x = bn(name="proj_bn")(x, train)
        return nn.relu(y + x)


class ResNet(nn.Module, kw_only=True):
    """CIFAR-style ResNet; see the module docstring.  (B, H, W, C) -> (out, aux)."""
    depths: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    stem_width: int = 16
    shortcut: str = "A"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int | Sequence[int] = 32   # the data's size; the convolutions take any size
    bn_momentum: float = 0.9   # flax-style: torch's momentum 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS} ('A': zero-padded identity, 'B': "
                             f"1x1 projection), got {self.shortcut!r}.")
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(f"depths {tuple(self.depths)} and widths {tuple(self.widths)} must be "
                             "non-empty and of equal length (one entry per stage).")
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict[str, Any]]:
        check_images(images, self.in_channels, model="ResNet")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(self.stem_width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=conv_init, name="stem_conv", **kw)(images.astype(self.dtype))
        x = nn.relu(BatchNorm(momentum=self.bn_momentum, name="stem_bn", **kw)(x, train))
        stages = []
        for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                x = BasicBlock(width=width, stride=stride, shortcut=self.shortcut,
                               bn_momentum=self.bn_momentum, name=f"stage_{i}_block_{j}", **kw)(x, train)
            stages.append(x)
        b, h, w, c = x.shape
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        aux: dict[str, Any] = {"encoded": x.reshape(b, h * w, c), "stages": stages, "pre_logits": pooled}
        if self.num_classes <= 0:
            return pooled, aux
        logits = nn.Dense(self.num_classes, kernel_init=default_kernel, bias_init=default_bias(c),
                          name="head", **kw)(pooled.astype(self.dtype))
        return logits.astype(jnp.float32), aux


def resnet(depths: Sequence[int], widths: Sequence[int], shortcut: str, in_channels: int = 3,
           **overrides: Any) -> ResNet:
    return ResNet(depths=tuple(depths), widths=tuple(widths), stem_width=widths[0], shortcut=shortcut,
                  in_channels=in_channels, **overrides)


register("resnet20_cifar", functools.partial(resnet, (3, 3, 3), (16, 32, 64), "A"))
register("resnet56_cifar", functools.partial(resnet, (9, 9, 9), (16, 32, 64), "A"))
register("resnet18_cifar", functools.partial(resnet, (2, 2, 2, 2), (64, 128, 256, 512), "B"))
register("resnet_mnist", functools.partial(resnet, (2, 2, 2), (32, 64, 128), "B", in_channels=1))
