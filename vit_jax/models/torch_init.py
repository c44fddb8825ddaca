"""PyTorch's parameter initialisations as flax initializers, for networks ported from torch code
(DINO, DeiT). The draws follow torch's distributions, not its random streams.

    trunc_normal(std)  timm's trunc_normal_(std=std) with its absolute bounds +-2
    trunc_normal_002   trunc_normal(0.02) (at this std practically untruncated): DINO's Linear
                       kernels, class token, pos-embed
    default_kernel     nn.Linear / nn.Conv2d's own weight init, kaiming_uniform(a=sqrt 5):
                       U(+-1/sqrt(fan_in)), fan_in read from the flax kernel's shape
    default_bias(n)    their bias init, U(+-1/sqrt(n)) with n the layer's fan_in
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from vit_jax.models.layers import Initializer

def trunc_normal(std: float) -> Initializer:
    """timm's trunc_normal_(std=std, a=-2, b=2): the bounds are absolute, so +-2 / std in stds."""
    return nn.initializers.truncated_normal(std, lower=-2.0 / std, upper=2.0 / std)


trunc_normal_002: Initializer = trunc_normal(0.02)
# variance 1 / (3 fan_in) uniform = U(+-1/sqrt(fan_in)); flax counts a conv's receptive field in fan_in
default_kernel: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def default_bias(fan_in: int) -> Initializer:
    bound = float(fan_in) ** -0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
