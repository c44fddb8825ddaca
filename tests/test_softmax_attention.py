"""vit_jax.models.softmax_attention: the attention core with a hand-written JVP, against torch's
autograd through softmax(q k^T) v and JAX's own differentiation of the same formula, in every mode
(reverse, forward, second order)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from vit_jax.models import layers
from vit_jax.models.softmax_attention import softmax_attention

RNG = np.random.default_rng(0)
Q, K, V, CT = (RNG.standard_normal((2, 3, 11, 8)).astype(np.float32) for _ in range(4))
Q *= 2.0   # peaked weights: the softmax's derivative far from uniform


def autodiff(q, k, v):
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k), axis=-1), v)


def test_values_and_gradients_equal_torch_autograd():
    out, vjp = jax.vjp(jax.jit(softmax_attention), Q, K, V)
    grads = vjp(jnp.asarray(CT))
    t = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (Q, K, V)]
    ref = torch.softmax(t[0] @ t[1].transpose(-1, -2), dim=-1) @ t[2]
    ref.backward(torch.from_numpy(CT))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(grads, t):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_forward_mode_and_second_order_equal_jax_s_own_derivatives():
    tangents = tuple(jnp.asarray(RNG.standard_normal(Q.shape).astype(np.float32)) for _ in range(3))
    _, ours = jax.jvp(softmax_attention, (Q, K, V), tangents)
    _, theirs = jax.jvp(autodiff, (Q, K, V), tangents)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)

    def second(f):   # d/dq of <grad_k sum(f^2), CT>: reverse over reverse through the tangent rule
        return jax.grad(lambda q: jnp.sum(jax.grad(lambda k: jnp.sum(f(q, k, V) ** 2))(K) * CT))(Q)
    np.testing.assert_allclose(second(softmax_attention), second(autodiff), rtol=1e-3, atol=1e-4)
    # forward over reverse (Hessian-vector products)
    hvp = lambda f: jax.jvp(jax.grad(lambda q: jnp.sum(f(q, K, V) * CT)), (Q,), (tangents[0],))[1]  # noqa: E731
    np.testing.assert_allclose(hvp(softmax_attention), hvp(autodiff), rtol=1e-3, atol=1e-4)


def test_bfloat16_keeps_its_dtype():
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in (Q, K, V))
    out, vjp = jax.vjp(softmax_attention, q, k, v)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in vjp(out))
    np.testing.assert_allclose(np.asarray(out, np.float32), autodiff(Q, K, V), rtol=5e-2, atol=5e-2)


def test_the_models_cpu_fast_path_is_this_one():
    # layers.dot_product_attention on the CPU without bias, dropout or recording: token-major in and out
    q, k, v = (jnp.swapaxes(jnp.asarray(a), 1, 2) for a in (Q, K, V))   # (B, L, H, hd)
    f = lambda q, k, v: layers.dot_product_attention(q, k, v, scale=0.5)   # noqa: E731
    want = jnp.swapaxes(softmax_attention(jnp.swapaxes(q * 0.5, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)), 1, 2)
    np.testing.assert_array_equal(f(q, k, v), want)
    assert "custom_jvp_call" in str(jax.make_jaxpr(f)(q, k, v))
