"""Schedules against their closed forms; the weight-decay mask; the EMA."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vit_jax import models, objectives, optim, validate
from vit_jax.config_base import base_config, mnist5k_config
from vit_jax.data.info import DataInfo
from vit_jax.models.dino_head import DINOHead
from vit_jax.models.vit import scan_params


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


def test_step_schedule_start_lr_and_cooldown():
    """He et al.'s steps (lr / 10 at 50% and 75% of the run), timm's warmup_lr and cooldown."""
    f = optim.warmup_step(0.1, 100, 0, boundaries=(0.5, 0.75), factor=0.1)
    assert [float(f(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3])
    assert float(optim.warmup_step(0.1, 100, 10, start_lr=0.02)(5)) == pytest.approx(0.06)  # 0.02 -> 0.1
    cfg = ml_collections.ConfigDict(dict(optim=dict(lr=1.0, schedule="cosine", end_lr=0.1, start_lr=0.5)))
    sched = optim.make_schedule(cfg, 110, warmup_steps=10, cooldown_steps=10)
    assert float(sched(0)) == pytest.approx(0.5) and float(sched(5)) == pytest.approx(0.75)
    # the cosine runs over steps 10..100 and the last 10 hold end_lr
    assert float(sched(55)) == pytest.approx(0.55, rel=1e-5)
    assert [float(sched(s)) for s in (100, 105, 109)] == pytest.approx([0.1] * 3)
    cfg.optim.update(dict(schedule="step", step_boundaries=(0.5,), step_factor=0.2, start_lr=0.0))
    assert [float(optim.make_schedule(cfg, 40, 0)(s)) for s in (19, 20)] == pytest.approx([1.0, 0.2])


def test_decay_mask_on_a_real_vit():
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


def test_dino_decay_rule_decays_all_but_biases_and_1d_tensors():
    """facebookresearch/dino get_params_groups: no decay iff the name ends with .bias or the tensor
    is 1-D; so the class token, position embedding, Swin's table and the weight-norm g are decayed."""
    model = models.create("vit_tiny_patch4_16", num_classes=0, depth=1)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    head = DINOHead(out_dim=32, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    params = {"backbone": params, "head": jax.eval_shape(head.init, jax.random.PRNGKey(0),
                                                         jnp.zeros((1, 192)))["params"]}
    flat = {optim.path_str(p): v for p, v in
            jax.tree_util.tree_leaves_with_path(optim.decay_mask(params, rule="dino"))}
    shapes = {optim.path_str(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
    for name, decayed in flat.items():
        leaf = name.rsplit("/", 1)[-1]
        torch_1d = len(shapes[name]) == 1 and leaf != "g"  # torch's weight_g is (K, 1)
        assert decayed == (not (leaf == "bias" or torch_1d)), name
    assert flat["backbone/cls_token"] and flat["backbone/pos_embed"] and flat["head/last_layer/g"]
    assert not flat["backbone/blocks_0/norm1/scale"] and not flat["head/mlp_0/bias"]
    swin = models.create("swin_tiny_patch4_window7_224", num_classes=0, width=8, depths=(1, 1),
                         num_heads=(1, 2), window_size=2, image_size=16)
    sp = jax.eval_shape(swin.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    tables = [v for p, v in jax.tree_util.tree_leaves_with_path(optim.decay_mask(sp, rule="dino"))
              if optim.path_str(p).endswith("relative_position_bias_table")]
    assert tables and all(tables)
    with pytest.raises(ValueError, match="weight-decay rule"):
        optim.decay_mask(params, rule="nope")


def test_decay_mask_swin_tables_and_cvt_cls_token():
    for name, kw, size in (("swin_tiny_patch4_window7_224", dict(width=8, depths=(1, 1), num_heads=(1, 2),
                                                                 window_size=2, image_size=16), 16),
                           ("cvt_13_224", dict(widths=(8, 16, 24), depths=(1, 1, 1), num_heads=(1, 2, 3)), 64)):
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


# --- DINO / EsViT: per-parameter gradient clipping and the cosine weight-decay schedule ---

def _dino_clip_numpy(grads: dict, clip: float) -> dict:
    """DINO's utils.clip_gradients, leaf by leaf, in float64 NumPy (the reference)."""
    out = {}
    for name, g in grads.items():
        g = np.asarray(g, np.float64)
        norm = np.linalg.norm(g.ravel())
        coef = clip / (norm + 1e-6)
        out[name] = g * coef if coef < 1 else g
    return out


def _random_grads() -> dict:
    rng = np.random.default_rng(0)
    # scales chosen so that some leaves are far above the threshold 1.0 and some below it
    return {"kernel": (rng.normal(size=(8, 16)) * 3.0).astype(np.float32),       # norm ~34: clipped
            "bias": (rng.normal(size=(16,)) * 0.05).astype(np.float32),          # norm ~0.2: kept
            "pos_embed": (rng.normal(size=(1, 5, 16)) * 0.5).astype(np.float32),  # norm ~4.5: clipped
            "scale": (rng.normal(size=(16,)) * 0.1).astype(np.float32),          # norm ~0.4: kept
            "zero": np.zeros((3, 3), np.float32)}                                # no NaN from 0 / 1e-6


def _norm(x) -> float:
    return float(np.linalg.norm(np.asarray(x, np.float64).ravel()))


def test_clip_by_param_norm_matches_dino_formula():
    grads, clip = _random_grads(), 1.0
    norms = {k: _norm(v) for k, v in grads.items()}
    assert sum(n > clip for n in norms.values()) >= 2 and sum(0 < n < clip for n in norms.values()) >= 2
    tx = optim.clip_by_param_norm(clip)
    got, _ = jax.jit(tx.update)(grads, tx.init(grads))
    want = _dino_clip_numpy(grads, clip)
    for k in grads:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=1e-7, err_msg=k)
        if norms[k] < clip:  # under the threshold: untouched, bit for bit
            np.testing.assert_array_equal(np.asarray(got[k]), grads[k], err_msg=k)
        else:  # over it: each tensor lands on the threshold (less DINO's 1e-6)
            assert _norm(got[k]) == pytest.approx(clip * norms[k] / (norms[k] + 1e-6), rel=1e-5)
    # global-norm clipping scales every leaf by one shared factor instead: a different result
    glob, _ = optax.clip_by_global_norm(clip).update(grads, optax.EmptyState())
    assert not np.allclose(np.asarray(glob["bias"]), np.asarray(got["bias"]))
    assert not np.allclose(np.asarray(glob["kernel"]), np.asarray(got["kernel"]))


def _sgd_config(**optim_overrides):
    cfg = base_config()
    # plain SGD, constant lr 1, no decay, no momentum: the update is minus the clipped gradient
    cfg.optim.update(dict(name="sgd", lr=1.0, schedule="constant", warmup_steps=0, b1=0.0,
                          weight_decay=0.0, clip_norm=1.0))
    cfg.optim.update(optim_overrides)
    return cfg


@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_make_optimizer_clip_mode(mode):
    grads = _random_grads()
    tx, _ = optim.make_optimizer(_sgd_config(clip_mode=mode), grads, total_steps=10)
    updates, _ = tx.update(grads, tx.init(grads), grads)
    if mode == "per_param":
        want = _dino_clip_numpy(grads, 1.0)
    else:
        want, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    for k in grads:
        np.testing.assert_allclose(-np.asarray(updates[k]), np.asarray(want[k]), rtol=1e-5, atol=1e-7)


def _wd_closed_form(start: float, end: float, t: int, total: int) -> float:
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t / total))


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 150])
def test_cosine_decay_value_closed_form(step):
    start, end, total = 0.04, 0.4, 100
    got = float(optim.cosine_decay_value(start, end, total)(step))
    assert got == pytest.approx(_wd_closed_form(start, end, min(step, total), total), rel=1e-6)


def _zero_grad_updates(cfg, total: int, steps: list[int]):
    """Updates at `steps` for zero gradients and fixed params (a decayed kernel, a bias)."""
    rng = np.random.default_rng(1)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx, schedule = optim.make_optimizer(cfg, params, total)
    update = jax.jit(tx.update)
    state, out = tx.init(params), {}
    for t in range(max(steps) + 1):
        u, state = update(zeros, state, params)
        if t in steps:
            out[t] = u
    return params, schedule, out


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_schedule_in_the_update(name):
    start, end, total = 0.04, 0.4, 20
    steps = [0, total // 2, total - 1]  # first, middle, last training step
    cfg = base_config()
    # no lr warmup, so lr(0) > 0 and the first step checks wd(0) = weight_decay too
    cfg.optim.update(dict(name=name, lr=1e-2, end_lr=1e-4, schedule="cosine", warmup_steps=0,
                          weight_decay=start, weight_decay_end=end, b1=0.0 if name == "sgd" else 0.9))
    params, schedule, out = _zero_grad_updates(cfg, total, steps)
    for t in steps:
        lr, wd = float(schedule(t)), _wd_closed_form(start, end, t, total)
        assert lr > 0
        # zero gradients leave Adam's moments at 0, so only the decoupled decay moves the kernel
        np.testing.assert_allclose(np.asarray(out[t]["dense"]["kernel"]),
                                   -lr * wd * np.asarray(params["dense"]["kernel"]), rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(np.asarray(out[t]["dense"]["bias"]), 0.0)  # masked: never decayed


def test_weight_decay_end_off_keeps_a_constant():
    cfg = base_config()
    cfg.optim.update(dict(lr=1e-2, schedule="constant", weight_decay=0.05))
    assert cfg.optim.weight_decay_end < 0  # the default is off
    params, _, out = _zero_grad_updates(cfg, 10, [0, 9])
    for t in (0, 9):
        np.testing.assert_allclose(np.asarray(out[t]["dense"]["kernel"]),
                                   -1e-2 * 0.05 * np.asarray(params["dense"]["kernel"]), rtol=1e-5)


def test_lars_takes_the_weight_decay_schedule():
    cfg = base_config()
    cfg.optim.update(dict(name="lars", weight_decay=0.04, weight_decay_end=0.4))
    params = {"dense": {"kernel": jnp.ones((4, 6)), "bias": jnp.ones((6,))}}
    tx, _ = optim.make_optimizer(cfg, params, 10)
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    state = tx.init(params)
    for _ in range(3):
        u, state = tx.update(grads, state, params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
    # the schedule keeps its own step counter in the state, in step with the lr's
    counts = [int(x) for p, x in jax.tree_util.tree_leaves_with_path(state) if "count" in optim.path_str(p)]
    assert counts and all(c == 3 for c in counts)


@pytest.mark.parametrize("key,value,message", [
    ("clip_mode", "layer", "optim.clip_mode='layer': use 'global'"),
    ("clip_mode", "per-param", "'per_param'"),
    ("weight_decay_end", float("nan"), "optim.weight_decay_end=nan must be a finite number >= 0"),
    ("weight_decay_end", float("inf"), "optim.weight_decay_end=inf"),
    ("step_boundaries", (0.75, 0.5), r"schedule='step' needs optim.step_boundaries as increasing"),
    ("step_factor", 0.0, r"optim.step_factor > 0 \(got 0.0\)"),
])
def test_validation_of_the_new_optim_keys(key, value, message):
    cfg = base_config()
    cfg.optim[key] = value
    if key.startswith("step_"):
        cfg.optim.schedule = "step"
    with pytest.raises(validate.ConfigError, match=message):
        validate.validate(cfg)  # fails in the number checks, before any data or model
    for good in ({"clip_mode": "per_param"}, {"weight_decay_end": 0.4}, {"weight_decay_end": -1.0}):
        cfg = base_config()
        cfg.optim.update(good)
        validate._check_numbers(cfg)  # no error


def test_clip_by_param_norm_epsilon_is_dinos():
    # With a tiny threshold the 1e-6 in clip / (norm + 1e-6) is visible: a leaf whose norm equals
    # the threshold is still scaled, by clip / (clip + 1e-6), exactly as DINO does.
    clip = 1e-5
    g = {"w": np.full((4,), clip / 2, np.float32)}  # norm = 2 * clip/2 = clip
    got, _ = optim.clip_by_param_norm(clip).update(g, optax.EmptyState())
    np.testing.assert_allclose(np.asarray(got["w"]), _dino_clip_numpy(g, clip)["w"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["w"]), g["w"] * clip / (clip + 1e-6), rtol=1e-5)


def test_per_param_clipping_treats_scanned_layers_as_separate_tensors():
    # A scanned ViT stacks every layer's tensor into one "blocks" leaf; DINO (unscanned torch)
    # clips each layer's tensor alone, so the scanned clip must equal the unscanned one, also
    # when the backbone sits deeper in a method's params tree.
    depth = 3
    model = models.create("vit_tiny_patch4_16", num_classes=10, depth=depth)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    rng = np.random.default_rng(2)
    leaves, treedef = jax.tree.flatten(shapes)
    # layer i's gradients scaled by 10**(i - 1): some layers are clipped, others not
    grads = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=x.shape) * 0.02, jnp.float32)
                                         for x in leaves])
    grads = {k: (jax.tree.map(lambda g, i=int(k.split("_")[1]): g * 10.0 ** (i - 1), v)
                 if k.startswith("blocks_") else v) for k, v in grads.items()}
    unscanned = {"student": grads}
    scanned = {"student": scan_params(grads, depth)}
    mask = optim.scanned_mask(scanned)
    assert mask["student"]["blocks"]["attn"]["query"]["kernel"] is True
    assert mask["student"]["pos_embed"] is False
    assert not any(jax.tree.leaves(optim.scanned_mask(unscanned)))
    clip = optim.clip_by_param_norm(0.5, stacked=mask)
    got, _ = clip.update(scanned, clip.init(scanned))
    want, _ = optim.clip_by_param_norm(0.5).update(unscanned, None)
    want = {"student": scan_params(want["student"], depth)}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6), got, want)
    # without the mask the stacked leaf would be clipped as one tensor: a different answer
    flat, _ = optim.clip_by_param_norm(0.5).update(scanned, None)
    assert not np.allclose(np.asarray(flat["student"]["blocks"]["mlp"]["fc1"]["kernel"]),
                           np.asarray(got["student"]["blocks"]["mlp"]["fc1"]["kernel"]))


def test_mae_decays_its_tokens_as_main_pretrain():
    """facebookresearch/mae main_pretrain: timm's add_weight_decay without a skip list, so only
    biases and 1-D tensors are spared; the class token and the mask token are decayed."""
    c = mnist5k_config()
    c.objective, c.mae = "mae", objectives.default_config("mae")
    c.model.update(dict(width=16, depth=1, num_heads=2, mlp_dim=32))
    c.mae.update(dict(decoder_width=8, decoder_depth=1, decoder_heads=2))
    obj = objectives.build(c, DataInfo(num_classes=10, image_shape=(28, 28, 1), num_train=8))
    ex = {"image": jnp.zeros((1, 28, 28, 1)), "label": jnp.zeros((1,), jnp.int32)}
    params = jax.eval_shape(obj.init, jax.random.PRNGKey(0), ex)[0]
    mask = {optim.path_str(p): v for p, v in
            jax.tree_util.tree_leaves_with_path(optim.decay_mask(params, rule=obj.weight_decay_rule))}
    shapes = {optim.path_str(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
    for name, decayed in mask.items():
        assert decayed == (len(shapes[name]) > 1 and not name.endswith("bias")), name
    assert mask["encoder/cls_token"] and mask["mask_token"]
