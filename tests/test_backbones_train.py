"""Swin and CvT train through the unchanged loop, supervised objective and evaluation protocols."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from tests.tiny_config import get_config
from vit_jax import checkpoint, metrics, optim, train, validate
from vit_jax import state as state_lib

BACKBONES = {
    "swin": ("swin_tiny_patch4_window7_224",
             dict(patch_size=2, width=8, depths=(1, 1), num_heads=(1, 2), window_size=2, image_size=8)),
    "cvt": ("cvt_13_224",
            dict(widths=(8, 16, 24), depths=(1, 1, 1), num_heads=(1, 2, 3), patch_sizes=(3, 3, 3),
                 patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1), image_size=8)),
}


def config(name):
    cfg = get_config()
    cfg.model_name, model = BACKBONES[name]
    cfg.model = model
    cfg.total_steps, cfg.eval_every, cfg.checkpoint_every = 4, 4, 4
    return cfg


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_supervised_then_knn(name, tmp_path):
    summary = train.run(config(name), str(tmp_path / "sup"))
    assert 0.0 <= summary["eval/test/accuracy"] <= 1.0 and np.isfinite(summary["train/loss"])
    cfg = config(name)
    cfg.objective, cfg.total_steps, cfg.init_from = "knn", 0, str(tmp_path / "sup")
    cfg.evals = mlc.ConfigDict({"knn": dict(type="knn", ks=(5,))})
    out = train.run(cfg, str(tmp_path / "knn"))
    assert 0.0 < out["eval/knn/top1_k5"] <= 1.0
    rows = metrics.read_jsonl(str(tmp_path / "knn" / "metrics.jsonl"))
    assert rows[0]["step"] == 0
    params = checkpoint.load_params(str(tmp_path / "sup"))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_cvt_batch_stats_are_updated_by_the_train_step():
    cfg = config("cvt")
    plan = validate.validate(cfg)
    ex = {k: jnp.zeros((1,) + v.shape, v.dtype) for k, v in plan.example.items()}
    params, extra = jax.jit(plan.objective.init)(jax.random.PRNGKey(0), ex)  # (eager: 4x slower)
    assert "batch_stats" in extra
    tx, schedule = optim.make_optimizer(cfg, params, cfg.total_steps)
    state = state_lib.create(params, extra, tx, jax.random.PRNGKey(1))
    rs = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rs.standard_normal((16, 8, 8, 1)) + 3.0, jnp.float32),
             "label": jnp.asarray(rs.integers(0, 10, 16), jnp.int32)}
    new, _ = jax.jit(train.make_train_step(plan.objective, tx, schedule, 1, 0.0))(state, batch)
    before, after = jax.tree.leaves(extra), jax.tree.leaves(new["extra"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
