"""The sharded train step on 8 simulated CPU devices equals the one-device step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_config import get_config
from vit_jax import optim, sharding, train, validate
from vit_jax import state as state_lib


def run_steps(mesh, cfg, batches, fsdp_min_size=1):
    plan = validate.validate(cfg)
    ex = {k: jnp.zeros((1,) + v.shape, v.dtype) for k, v in plan.example.items()}

    rng = jax.random.PRNGKey(0)
    tx, schedule = optim.make_optimizer(cfg, jax.eval_shape(plan.objective.init, rng, ex)[0], cfg.total_steps)

    def init(rng):
        return state_lib.init_state(plan.objective, tx, rng, ex)

    abstract = jax.eval_shape(init, rng)
    shard = sharding.tree_shardings(abstract, mesh, fsdp_min_size=fsdp_min_size)
    state = jax.jit(init, out_shardings=shard)(rng)
    step = jax.jit(train.make_train_step(plan.objective, tx, schedule, 1, 0.0),
                   in_shardings=(shard, sharding.batch_sharding(mesh)),
                   out_shardings=(shard, sharding.replicated(mesh)), donate_argnums=(0,))
    losses = []
    for b in batches:
        state, m = step(state, sharding.global_batch(b, mesh))
        losses.append(float(m["train/loss"]))
    return state, losses, shard


@pytest.fixture(scope="module")
def setup():
    cfg = get_config()
    cfg.model = dict(width=32, depth=2, num_heads=4, mlp_dim=64)
    # SGD, not Adam: the key bias has an exactly-zero gradient (softmax ignores a per-query
    # constant), and Adam would blow its float rounding noise up to lr-sized steps.
    cfg.optim.name, cfg.optim.lr, cfg.optim.b1 = "sgd", 0.5, 0.9
    rs = np.random.default_rng(0)
    batches = [{"image": rs.standard_normal((16, 8, 8, 1)).astype(np.float32),
                "label": rs.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
    single, single_losses, _ = run_steps(sharding.make_mesh(1, 1, 1, jax.devices()[:1]), cfg, batches)
    return cfg, batches, jax.device_get(single["params"]), single_losses


@pytest.mark.parametrize("axes", [(4, 2, 1), (2, 2, 2), (1, 8, 1)])
def test_sharded_equals_single_device(setup, axes):
    cfg, batches, params1, losses1 = setup
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(*axes)
    state, losses, shard = run_steps(mesh, cfg, batches)
    # the parameters really are split, not replicated
    specs = [s.spec for s in jax.tree.leaves(shard["params"])]
    if axes[1] > 1:
        assert any("fsdp" in tuple(s) for s in specs)
    if axes[2] > 1:
        assert any("model" in tuple(s) for s in specs)
    np.testing.assert_allclose(losses, losses1, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(state["params"])),
                            jax.tree.leaves(params1)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5, err_msg=str(path))


def test_mesh_errors():
    with pytest.raises(ValueError, match="devices"):
        sharding.make_mesh(3, 1, 1)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(-1, -1, 1)
