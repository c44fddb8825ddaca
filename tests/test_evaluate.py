"""Evaluation protocols: layer-wise lr decay, backbone loading, k-NN, linear probe, fine-tuning."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from tests.tiny_config import get_config
from vit_jax import checkpoint, init_from, metrics, models, optim, sharding, train, validate
from vit_jax.data import pipeline
from vit_jax.evaluate import features as eval_features
from vit_jax.evaluate import knn
from vit_jax.evaluate import metrics as eval_metrics
from vit_jax.models import posemb


def test_layer_decay_closed_form():
    model = models.create("vit_tiny_patch4_16", num_classes=5, depth=3)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    m = {optim.path_str(p): float(np.asarray(v)) for p, v in
         jax.tree_util.tree_leaves_with_path(optim.layer_decay_multipliers(params, 3, 0.5))}
    # MAE: scale = decay ** (L + 1 - layer_id); embed 0, block i -> i + 1, head L + 1
    assert m["embedding/kernel"] == m["pos_embed"] == m["cls_token"] == 0.5 ** 4
    assert m["blocks_0/attn/query/kernel"] == 0.5 ** 3
    assert m["blocks_2/mlp/fc2/bias"] == 0.5 ** 1
    assert m["head/kernel"] == m["norm/scale"] == 1.0
    scanned = models.create("vit_tiny_patch4_16", num_classes=5, depth=3, scan=True)
    sp = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    f = optim.layer_decay_multipliers(sp, 3, 0.5)["blocks"]["attn"]["query"]["kernel"]
    np.testing.assert_allclose(np.ravel(f), [0.125, 0.25, 0.5])


def brute_force_knn(train, train_y, test, k, t, c):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = []
    for q in test:
        sims = train @ q
        nn_ = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(c)
        for j in nn_:
            votes[train_y[j]] += np.exp(sims[j] / t)
        out.append(np.argmax(votes))
    return np.array(out)


def test_knn_equals_brute_force():
    rs = np.random.default_rng(0)
    train, test = rs.standard_normal((300, 16)), rs.standard_normal((50, 16))
    train_y = rs.integers(0, 4, 300)
    got = knn.knn_predict(train, train_y, test, 4, ks=(1, 5, 20), temperature=0.07, chunk=16)
    for k in (1, 5, 20):
        np.testing.assert_array_equal(got[k], brute_force_knn(train, train_y, test, k, 0.07, 4))


def test_merge_loads_backbone_keeps_head_and_fills_sincos():
    src_model = models.create("vit_tiny_patch4_16", num_classes=0, depth=2, posemb="sincos2d")
    dst_model = models.create("vit_tiny_patch4_16", num_classes=7, depth=2, pool="gap")
    x = jnp.zeros((1, 16, 16, 3))
    src = src_model.init(jax.random.PRNGKey(0), x)["params"]
    dst = dst_model.init(jax.random.PRNGKey(1), x)["params"]
    merged, report = init_from.merge(dst, src)
    np.testing.assert_array_equal(merged["blocks_1"]["mlp"]["fc1"]["kernel"], src["blocks_1"]["mlp"]["fc1"]["kernel"])
    np.testing.assert_array_equal(merged["head"]["kernel"], dst["head"]["kernel"])
    np.testing.assert_allclose(merged["pos_embed"], posemb.sincos_2d(4, 4, 192, cls_token=True), atol=1e-6)
    assert "norm/scale" in report["unused"]  # MAE fine-tuning drops the final norm (gap + fc_norm)
    deeper = models.create("vit_tiny_patch4_16", num_classes=7, depth=3).init(jax.random.PRNGKey(1), x)["params"]
    with pytest.raises(ValueError, match="blocks_2.*missing in the source"):
        init_from.merge(deeper, src)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pre"))
    cfg = get_config()
    cfg.total_steps = 8
    train.run(cfg, workdir)
    return workdir


def test_knn_objective_on_pretrained_and_random(pretrained, tmp_path):
    cfg = get_config()
    cfg.objective, cfg.total_steps, cfg.init_from = "knn", 0, pretrained
    cfg.evals = mlc.ConfigDict({"knn": dict(type="knn", ks=(1, 5))})
    summary = train.run(cfg, str(tmp_path / "knn"))
    rows = metrics.read_jsonl(str(tmp_path / "knn" / "metrics.jsonl"))
    assert rows[0]["step"] == 0 and set(rows[0]) >= {"eval/knn/top1_k1", "eval/knn/top1_k5"}
    assert summary["eval/knn/top1_k5"] == rows[0]["eval/knn/top1_k5"]
    assert 0.1 < rows[0]["eval/knn/top1_k1"] <= 1.0  # real digits: well above chance


def test_knn_memory_subset_is_fixed_and_smaller(pretrained, tmp_path):
    """evals.knn.memory_size: a seeded subset of the memory, the same at every evaluation."""
    a, b = knn.MemorySubset(range(100), 10, 0), knn.MemorySubset(range(100), 10, 0)
    assert len(a) == 10 and list(a.indices) == list(b.indices) == sorted(a.indices)
    assert [a[i] for i in range(10)] == list(a.indices)
    assert list(knn.MemorySubset(range(100), 10, 1).indices) != list(a.indices)
    cfg = get_config()
    cfg.objective, cfg.total_steps, cfg.init_from = "knn", 0, pretrained
    cfg.evals = mlc.ConfigDict({"knn": dict(type="knn", ks=(1,)),
                                "knn_sub": dict(type="knn", ks=(1,), memory_size=200)})
    summary = train.run(cfg, str(tmp_path / "knn"))
    assert 0.1 < summary["eval/knn_sub/top1_k1"] <= summary["eval/knn/top1_k1"] + 0.05
    cfg.evals.knn_sub.memory_size = -1
    with pytest.raises(validate.ConfigError, match="memory_size=-1 must be an int >= 0"):
        validate.validate(cfg)


def test_linear_probe_keeps_backbone_frozen(pretrained, tmp_path):
    cfg = get_config()
    cfg.objective, cfg.init_from, cfg.total_steps = "linear_probe", pretrained, 6
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.clip_norm = "lars", 0.1, 0.0, 0.0
    cfg.optim.freeze = "backbone/"
    train.run(cfg, str(tmp_path / "probe"))
    probe = checkpoint.load_params(str(tmp_path / "probe"))
    source = checkpoint.load_params(pretrained)
    for name in ("blocks_0", "embedding", "norm"):
        for a, b in zip(jax.tree.leaves(probe["backbone"][name]), jax.tree.leaves(source[name])):
            np.testing.assert_array_equal(a, b)
    assert not np.allclose(probe["head"]["linear"]["kernel"], 0)


def test_finetune_starts_from_the_pretrained_backbone(pretrained, tmp_path):
    cfg = get_config()
    cfg.init_from, cfg.total_steps = pretrained, 1
    cfg.optim.layer_decay = 0.5
    cfg.optim.warmup_steps = 1  # lr(0) = 0: the one step changes nothing, so params == source
    train.run(cfg, str(tmp_path / "ft"))
    ft, source = checkpoint.load_params(str(tmp_path / "ft")), checkpoint.load_params(pretrained)
    np.testing.assert_array_equal(ft["blocks_1"]["attn"]["key"]["kernel"], source["blocks_1"]["attn"]["key"]["kernel"])


def _digits_source(n: int = 11):
    rs = np.random.default_rng(0)
    return [{"image": rs.random((4, 4, 1)).astype(np.float32), "label": np.int32(i % 3)} for i in range(n)]


def test_metrics_sums_accumulate_on_device_over_padded_batches():
    """11 examples in batches of 4: the padded rows (mask 0) count for nothing, and the device-side
    sums equal the mean computed on the host."""
    source = _digits_source()
    mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
    step = jax.jit(lambda state, b: {"x": jnp.sum(b["image"].mean(axis=(1, 2, 3)) * b["mask"]),
                                     "count": jnp.sum(b["mask"])})
    got = eval_metrics.evaluate(step, None, pipeline.eval_batches(source, lambda e: e, 4), mesh, "eval/test")
    want = np.mean([e["image"].mean() for e in source])
    assert set(got) == {"eval/test/x"}
    np.testing.assert_allclose(got["eval/test/x"], want, rtol=1e-6)


def test_features_come_back_in_source_order_without_padding():
    source = _digits_source()
    mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
    fn = jax.jit(lambda params, images: images.reshape(images.shape[0], -1) * params)
    feats, labels = eval_features.extract(fn, 2.0, pipeline.eval_batches(source, lambda e: e, 4, workers=2), mesh)
    np.testing.assert_allclose(feats, np.stack([2.0 * e["image"].reshape(-1) for e in source]), rtol=1e-6)
    np.testing.assert_array_equal(labels, [e["label"] for e in source])
