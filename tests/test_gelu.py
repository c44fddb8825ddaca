"""vit_jax.models.gelu: the exact GELU with its hand-written derivative, against jax.nn.gelu,
torch's F.gelu (autograd) and the closed form."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vit_jax.models import layers
from vit_jax.models.gelu import gelu

X = np.concatenate([np.linspace(-12, 12, 2401), np.random.default_rng(0).standard_normal(4096) * 3]
                   ).astype(np.float32)


def test_values_equal_jax_torch_and_the_closed_form():
    # atol 1e-6: below x = -5 the erf form rounds to 0 where erfc still gives ~1e-7 (torch's too)
    got = np.asarray(jax.jit(gelu)(X))
    np.testing.assert_allclose(got, np.asarray(jax.nn.gelu(X, approximate=False)), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got, torch.nn.functional.gelu(torch.from_numpy(X)).numpy(), rtol=2e-6, atol=1e-6)
    closed = [x * 0.5 * math.erfc(-x / math.sqrt(2)) for x in X.astype(np.float64)]
    np.testing.assert_allclose(got, closed, rtol=2e-6, atol=1e-6)
    assert got[0] == 0.0 and got[2400] == X[2400] == 12.0   # the tails (x = -12, 12): 0 and x


def test_gradient_equals_torch_autograd_and_the_closed_form():
    r = np.random.default_rng(1).standard_normal(X.shape).astype(np.float32)
    ours = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(gelu(x) * r)))(X))
    t = torch.from_numpy(X.copy()).requires_grad_(True)
    torch.nn.functional.gelu(t).backward(torch.from_numpy(r))
    np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-5, atol=1e-6)
    x64 = X.astype(np.float64)
    closed = (0.5 * np.vectorize(math.erfc)(-x64 / math.sqrt(2))
              + x64 * np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)) * r
    np.testing.assert_allclose(ours, closed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=False) * r))(X),
                               rtol=1e-5, atol=1e-6)


def test_forward_mode_and_second_derivative():
    x = jnp.asarray([-1.5, 0.0, 0.3, 2.0])
    _, tangent = jax.jvp(gelu, (x,), (jnp.ones_like(x),))
    np.testing.assert_allclose(tangent, jax.vmap(jax.grad(gelu))(x), rtol=1e-6)
    # d2/dx2 x Phi(x) = phi(x) (2 - x^2)
    want = np.exp(-np.asarray(x) ** 2 / 2) / math.sqrt(2 * math.pi) * (2 - np.asarray(x) ** 2)
    np.testing.assert_allclose(jax.vmap(jax.grad(jax.grad(gelu)))(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_keeps_its_dtype(dtype):
    x = jnp.asarray(X[:64], dtype)
    y, g = gelu(x), jax.grad(lambda v: jnp.sum(gelu(v)))(x)
    assert y.dtype == dtype and g.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), jax.nn.gelu(X[:64], approximate=False), rtol=2e-2, atol=2e-2)


def test_the_models_gelu_is_this_one():
    assert layers.get_activation("gelu") is gelu
