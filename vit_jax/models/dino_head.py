"""DINO's projection head (Caron et al. 2021; EsViT uses two of them: views and regions).

    head = DINOHead(out_dim=65536)
    logits = head.apply(variables, features)      # (..., in_dim) -> (..., out_dim)

MLP in -> hidden -> hidden -> bottleneck (GELU between, no activation after the last), L2
normalisation, then a weight-normalised linear layer without bias: W = g * v / ||v|| with the
norm over the input axis of each output unit. With norm_last_layer (DINO's default for ViTs)
g is fixed at 1, so each logit is the cosine between the bottleneck and a learned prototype;
otherwise g is learned (initialised to 1). MLP weights ~ N(0, 0.02) (DINO calls timm's
trunc_normal_ with its default absolute bounds +-2: practically untruncated), biases 0; v keeps
torch's default Linear init, U(-1/sqrt(d), 1/sqrt(d)), as DINO builds it after that init. Parameters: mlp_0 .. mlp_{n-1} (Dense),
last_layer/v (bottleneck, out_dim) [and last_layer/g (out_dim,)].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.torch_init import default_kernel, trunc_normal_002
from vit_jax.models.gelu import gelu
from vit_jax.models.layers import Dtype

Array = jax.Array


class WeightNormLinear(nn.Module, kw_only=True):
    """x (..., d) -> x @ (g * v / ||v||_col) without bias; v: (d, out)."""
    out_dim: int
    learn_scale: bool = False
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        v = self.param("v", default_kernel, (x.shape[-1], self.out_dim), self.param_dtype)
        w = v / jnp.maximum(jnp.linalg.norm(v.astype(jnp.float32), axis=0, keepdims=True), 1e-12)
        if self.learn_scale:
            w = w * self.param("g", nn.initializers.ones, (self.out_dim,), self.param_dtype)
        return x.astype(jnp.float32) @ w.astype(jnp.float32)


class DINOHead(nn.Module):
    """See the module docstring. Output float32."""
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    norm_last_layer: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"DINOHead num_layers={self.num_layers} must be >= 1.")
        sizes = [self.hidden_dim] * (self.num_layers - 1) + [self.bottleneck_dim]
        self.mlp = [nn.Dense(s, kernel_init=trunc_normal_002, dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             name=f"mlp_{i}") for i, s in enumerate(sizes)]
        self.last_layer = WeightNormLinear(out_dim=self.out_dim, learn_scale=not self.norm_last_layer,
                                           param_dtype=self.param_dtype)

    def __call__(self, x: Array) -> Array:
        for i, dense in enumerate(self.mlp):
            x = dense(x)
            if i < len(self.mlp) - 1:
                x = gelu(x)
        x = x.astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # F.normalize
        return self.last_layer(x)
