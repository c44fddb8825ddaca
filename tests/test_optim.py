"""Schedules against their closed forms; the weight-decay mask; the EMA."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import optim


@pytest.mark.parametrize("step", [0, 5, 10, 11, 55, 100, 150])
def test_warmup_cosine_closed_form(step):
    base, end, warm, total = 1e-3, 1e-5, 10, 100
    got = float(optim.warmup_cosine(base, total, warm, end)(step))
    if step < warm:
        want = base * step / warm
    else:
        t = min((step - warm) / (total - warm), 1.0)
        want = end + 0.5 * (base - end) * (1 + math.cos(math.pi * t))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)


def test_linear_and_constant():
    assert float(optim.warmup_linear(1.0, 10, 0, 0.0)(5)) == pytest.approx(0.5)
    assert float(optim.constant(2.0, 10, 4)(2)) == pytest.approx(1.0)
    assert float(optim.constant(2.0, 10, 4)(7)) == pytest.approx(2.0)


def test_decay_mask_excludes_biases_norms_and_embeddings():
    params = {"embedding": {"kernel": jnp.ones((4, 4, 3, 8)), "bias": jnp.ones(8)},
              "cls": jnp.ones((1, 1, 8)), "pos_embedding": jnp.ones((1, 5, 8)),
              "block0": {"norm1": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
                         "attn": {"query": {"kernel": jnp.ones((8, 8))}}},
              "head": {"kernel": jnp.ones((8, 10)), "bias": jnp.ones(10)}}
    mask = optim.decay_mask(params)
    assert mask["embedding"]["kernel"] and mask["head"]["kernel"] and mask["block0"]["attn"]["query"]["kernel"]
    assert not any([mask["embedding"]["bias"], mask["cls"], mask["pos_embedding"],
                    mask["block0"]["norm1"]["scale"], mask["block0"]["norm1"]["bias"], mask["head"]["bias"]])


def test_ema_update():
    ema = optim.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}, 0.75)
    np.testing.assert_allclose(ema["w"], [1.5, 3.0])
