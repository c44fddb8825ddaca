"""vit_jax.models.layer_norm: flax's LayerNorm values with a hand-written derivative, against
flax.linen.LayerNorm, torch's F.layer_norm (autograd) and finite differences."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vit_jax.models import layers
from vit_jax.models.layer_norm import LayerNorm, layer_norm

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((3, 5, 48)) * 2.5 + 0.7).astype(np.float32)
SCALE = (1 + 0.3 * RNG.standard_normal(48)).astype(np.float32)
BIAS = (0.2 * RNG.standard_normal(48)).astype(np.float32)
CT = RNG.standard_normal(X.shape).astype(np.float32)
PARAMS = {"params": {"scale": jnp.asarray(SCALE), "bias": jnp.asarray(BIAS)}}
FLAX = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)


def test_forward_is_flax_to_the_bit_and_the_parameters_are_flax_s():
    ours = LayerNorm(epsilon=1e-6)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), X)) == \
        jax.tree.map(jnp.shape, FLAX.init(jax.random.PRNGKey(0), X))
    np.testing.assert_array_equal(jax.jit(ours.apply)(PARAMS, X), jax.jit(FLAX.apply)(PARAMS, X))


def test_gradients_equal_flax_and_torch_autograd():
    def grads(module):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * CT), argnums=(0, 1)))(PARAMS, X)
    (p_ours, x_ours), (p_flax, x_flax) = grads(LayerNorm(epsilon=1e-6)), grads(FLAX)
    t = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (X, SCALE, BIAS)]
    torch.nn.functional.layer_norm(t[0], (48,), t[1], t[2], eps=1e-6).backward(torch.from_numpy(CT))
    for ours, flax_g, torch_g in ((x_ours, x_flax, t[0]), (p_ours["params"]["scale"], p_flax["params"]["scale"], t[1]),
                                  (p_ours["params"]["bias"], p_flax["params"]["bias"], t[2])):
        np.testing.assert_allclose(ours, flax_g, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(ours, torch_g.grad.numpy(), rtol=1e-5, atol=2e-6)


def test_forward_mode_and_second_derivative_match_finite_differences():
    x = jnp.asarray(X[0, 0])
    f = lambda v: layer_norm(v, jnp.asarray(SCALE), jnp.asarray(BIAS), 1e-6)   # noqa: E731
    t = jnp.asarray(CT[0, 0])
    _, tangent = jax.jvp(f, (x,), (t,))
    np.testing.assert_allclose(tangent, jax.jacrev(f)(x) @ t, rtol=1e-4, atol=1e-5)   # forward = reverse
    eps = 1e-2
    fd = (f(x + eps * t) - f(x - eps * t)) / (2 * eps)
    np.testing.assert_allclose(tangent, fd, rtol=1e-2, atol=1e-3)
    # second order: the gradient of a gradient exists and matches flax's
    g2 = lambda fn: jax.grad(lambda v: jnp.sum(jax.grad(lambda w: jnp.sum(fn(w) ** 3))(v) * t))(x)  # noqa: E731
    flax_f = lambda v: FLAX.apply(PARAMS, v)   # noqa: E731
    np.testing.assert_allclose(g2(f), g2(flax_f), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_output_dtype_follows_flax(dtype):
    for kw in ({}, {"dtype": dtype}):
        ours = LayerNorm(epsilon=1e-6, **kw).apply(PARAMS, jnp.asarray(X, dtype))
        theirs = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, **kw).apply(PARAMS, jnp.asarray(X, dtype))
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))


def test_the_models_layernorm_is_this_one():
    assert isinstance(layers.make_norm("layernorm", 1e-6), LayerNorm)
