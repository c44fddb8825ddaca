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


def test_decay_mask_on_a_real_vit():
    import jax
    from vit_jax import models
    model = models.create("vit_tiny_patch4_16", num_classes=10, depth=2)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    flat = {optim.path_str(p): v for p, v in
            jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    decayed = sorted(k for k, v in flat.items() if v)
    assert "embedding/kernel" in decayed and "head/kernel" in decayed
    assert "blocks_0/attn/query/kernel" in decayed and "blocks_1/mlp/fc2/kernel" in decayed
    for name in ("pos_embed", "cls_token", "embedding/bias", "blocks_0/norm1/scale", "norm/bias",
                 "head/bias", "blocks_0/mlp/fc1/bias"):
        assert flat[name] is False, name
    # every decayed leaf is a kernel
    assert all(k.endswith("kernel") for k in decayed)


def test_decay_mask_swin_tables_and_cvt_cls_token():
    import jax
    from vit_jax import models
    for name, kw, size in (("swin_tiny_patch4_window7_224", dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                                                                 window_size=2, image_size=16), 16),
                           ("cvt_13_224", dict(dims=(8, 16, 24), depths=(1, 1, 1), heads=(1, 2, 3)), 64)):
        model = models.create(name, num_classes=3, **kw)
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
        flat = {optim.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
        excluded = [k for k, v in flat.items() if not v and k.rsplit("/", 1)[-1] not in ("bias", "scale")]
        decayed = [k for k, v in flat.items() if v]
        assert all(k.endswith("kernel") for k in decayed), name
        if name.startswith("swin"):
            assert excluded and all(k.endswith("relative_position_bias_table") for k in excluded)
        else:
            assert excluded == ["stage_2_cls_token"]


def test_ema_update():
    ema = optim.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}, 0.75)
    np.testing.assert_allclose(ema["w"], [1.5, 3.0])
