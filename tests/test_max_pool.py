"""max_pool_2d (vit_jax/models/max_pool.py): values and gradients against torch's max_pool2d,
ties included (torch sends a window's gradient to its first maximum), and the CCT gradient the
same as with flax's max_pool where no window has a tie."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_jax.models import cct as cct_module
from vit_jax.models.cct import CCT
from vit_jax.models.max_pool import max_pool_2d

CASES = [((2, 28, 28, 3), 3, 2, 1),   # CCT's pool: 28 -> 14
         ((2, 15, 13, 4), 3, 2, 1),   # odd, non-square sizes
         ((1, 9, 9, 2), 2, 2, 0),     # no padding, the last row dropped (floor)
         ((2, 14, 14, 5), 3, 1, 1),   # overlapping windows at stride 1
         ((2, 11, 11, 3), 5, 3, 2)]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,kernel,stride,padding", CASES)
def test_values_and_gradient_equal_torch(shape, kernel, stride, padding, ties):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    if ties:   # a ReLU'd, quantised map: most windows hold several equal maxima
        x = np.maximum(np.round(x), 0).astype(np.float32)
    y, vjp = jax.vjp(lambda a: max_pool_2d(a, kernel, stride, padding), jnp.asarray(x))
    g = rng.normal(size=y.shape).astype(np.float32)
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    yt = F.max_pool2d(xt, kernel, stride, padding)
    yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), xt.grad.permute(0, 2, 3, 1).numpy(),
                               atol=1e-6)


def test_ties_go_to_the_first_maximum_only():
    x = jnp.ones((1, 2, 2, 1))
    dx = jax.grad(lambda a: max_pool_2d(a, 2, 2, 0).sum())(x)
    np.testing.assert_array_equal(np.asarray(dx)[0, ..., 0], [[1, 0], [0, 0]])


def test_under_jit_and_vmap():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 8, 8, 4)), jnp.float32)
    f = jax.jit(jax.vmap(jax.grad(lambda a: (max_pool_2d(a, 3, 2, 1) ** 2).sum())))
    want = jax.vmap(jax.grad(lambda a: (nn.max_pool(a, (3, 3), (2, 2), ((1, 1), (1, 1))) ** 2).sum()))(x)
    np.testing.assert_allclose(np.asarray(f(x)), np.asarray(want), atol=1e-6)


def test_cct_gradient_is_unchanged_from_flax_max_pool(monkeypatch):
    model = CCT(num_classes=5, image_size=(16, 12), width=32, depth=1, num_heads=2, mlp_ratio=1.0,
                n_conv_layers=2, conv_channels=8, in_channels=1)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 16, 12, 1)), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def grads():
        return jax.grad(lambda p: model.apply({"params": p}, x)[0].sum())(params)

    ours = grads()
    monkeypatch.setattr(cct_module, "max_pool_2d",
                        lambda a, k, s, p: nn.max_pool(a, (k, k), (s, s), ((p, p), (p, p))))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                 ours, grads())
