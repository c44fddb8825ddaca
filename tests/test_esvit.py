"""EsViT / DINO objective: loss at init, sharded centers, EMA teacher, held last layer, the loop,
k-NN of the teacher, the correspondence picture, and the backbones that feed the region loss."""
from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from tests.test_sharding import run_steps
from tests.tiny_config import get_config
from vit_jax import checkpoint, models, objectives, optim, sharding, train, viz
from vit_jax.data import multicrop
from vit_jax.data.pipeline import TrainPipeline
from vit_jax.data.transforms import get_stats
from vit_jax.models.dino_head import DINOHead
from vit_jax.objectives import dino_losses
from vit_jax.runs import load_run
from vit_jax.validate import ConfigError, validate

OUT_DIM = 64
BOTTLENECK = 256


def init_loss_range(out_dim: int, bottleneck: int, tau_s: float = 0.1, tau_t: float = 0.04):
    """Where a fresh DINO head's loss lies. Its logits are cosines between a unit bottleneck vector
    and unit prototypes, spread ~ 1/sqrt(bottleneck); with logit spreads s_s, s_t (after the
    temperatures) CE = ln K + s_s^2 / 2 - rho s_s s_t with the teacher/student correlation rho
    in [0, 1]: between ln K - s_s s_t + s_s^2 / 2 and ln K + s_s^2 / 2."""
    spread = 1.0 / math.sqrt(bottleneck)
    s_s, s_t = spread / tau_s, spread / tau_t
    return math.log(out_dim) - s_s * s_t, math.log(out_dim) + s_s ** 2 / 2 + 0.05


def esvit_config(region: bool = True, **esvit_kw):
    c = get_config()
    c.objective = "esvit"
    c.data.train_transform = "normalize('none')"
    c.esvit = objectives.default_config("esvit")
    c.esvit.update(dict(region=region, out_dim=OUT_DIM, hidden_dim=32, bottleneck_dim=BOTTLENECK,
                        global_size=8, local_size=4, num_local=2, flip=False, pixel_stats="none",
                        warmup_teacher_temp_epochs=2))
    c.esvit.update(esvit_kw)
    c.total_steps = 12
    c.evals = mlc.ConfigDict(dict(knn=dict(type="knn", ks=(5,)),
                                  esvit_correspondence=dict(type="correspondences", ink_images=3)))
    return c


def batches(cfg, n: int, start: int = 0):
    plan = validate(cfg)
    pipe = TrainPipeline(plan.train_source, plan.train_transform, cfg.batch_size, cfg.seed, workers=1)
    out = [pipe.batch_at(start + i) for i in range(n)]
    pipe.close()
    return plan, out


def fresh(cfg):
    """(plan, objective, one batch on device, params, extra) of a new run of `cfg`."""
    plan, (batch,) = batches(cfg, 1)
    obj = plan.objective
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    params, extra = jax.jit(obj.init)(jax.random.key(0), {k: v[:1] for k, v in b.items()})
    return plan, obj, b, params, extra


def test_crops_in_the_batch_and_loss_at_init_is_log_k():
    plan, obj, b, params, extra = fresh(esvit_config())
    assert b["global_crops"].shape == (16, 2, 8, 8, 1)
    assert b["local_crops"].shape == (16, 2, 4, 4, 1)
    assert "image" not in b
    loss, (metrics, new_extra) = jax.jit(obj.loss)(params, extra, b, jax.random.key(1), jnp.int32(0))
    low, high = init_loss_range(OUT_DIM, BOTTLENECK)
    assert low < float(loss) < high, (low, float(loss), high)
    assert set(metrics) >= {"loss", "view_loss", "region_loss", "teacher_temp"}
    assert float(metrics["teacher_temp"]) == pytest.approx(0.04)
    # the centers moved towards the teacher's outputs; the teacher itself did not
    assert np.abs(np.asarray(new_extra["center"])).sum() > 0
    for a, c in zip(jax.tree.leaves(new_extra["ema_teacher"]["params"]), jax.tree.leaves(extra["ema_teacher"]["params"])):
        np.testing.assert_array_equal(a, c)


def test_blur_sigma_reaches_the_crops_and_bad_values_fail_at_validate():
    """esvit.blur_sigma (pixels of a 224-px crop) is the crops' blur, scaled to global_size;
    DINO's (0.1, 2) by default; a reversed range is refused before anything is compiled."""
    assert tuple(objectives.default_config("esvit").blur_sigma) == (0.1, 2.0)
    obj = validate(esvit_config(blur_sigma=(0.8, 16.0))).objective
    assert obj.crops.blur_sigma == (0.8, 16.0)
    np.testing.assert_allclose(multicrop.sigma_pixels(obj.crops), (0.8 * 8 / 224, 16.0 * 8 / 224))
    with pytest.raises((ValueError, ConfigError), match="blur_sigma"):
        validate(esvit_config(blur_sigma=(2.0, 0.1)))


def test_full_size_dino_head_starts_near_log_65536():
    """DINO's head (2048 hidden, 256 bottleneck, 65,536 prototypes) on random features of 2 global
    + 4 local crops: the loss starts at about ln(65536) = 11.09."""
    head = DINOHead()
    feats = jax.random.normal(jax.random.key(0), (6, 4, 96))
    feats = feats + 2.0 * jax.random.normal(jax.random.key(1), (1, 4, 96))  # crops of one image agree
    params = head.init(jax.random.key(2), feats[0])["params"]
    logits = jax.jit(lambda p, x: head.apply({"params": p}, x))(params, feats)
    assert logits.shape == (6, 4, 65536)
    loss, _ = dino_losses.esvit_loss(logits, logits[:2], jnp.zeros((1, 65536)), 0.1, 0.04)
    low, high = init_loss_range(65536, 256)
    assert low < float(loss) < high and abs(float(loss) - math.log(65536)) < 1.0, float(loss)


def test_last_layers_held_by_the_optimizer_first_epoch_and_teacher_is_ema():
    cfg = esvit_config(freeze_last_layer_epochs=1)
    plan, obj, b, params, extra = fresh(cfg)
    pattern, steps = obj.held
    held = {optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)
            if re.match(pattern, optim.path_str(p))}
    assert held == {"head/last_layer/v", "region_head/last_layer/v"}
    assert steps == math.ceil(len(plan.train_source) / cfg.batch_size)
    # the gradient reaches them (and through them the rest): the optimizer holds them still
    grad = jax.jit(jax.grad(lambda p, s: obj.loss(p, extra, b, jax.random.key(1), s)[0]))
    g0 = grad(params, jnp.int32(0))
    for head in ("head", "region_head"):
        assert np.asarray(g0[head]["last_layer"]["v"]).any() and np.asarray(g0[head]["mlp_0"]["kernel"]).any()
    tx, _ = optim.make_optimizer(cfg, params, 4 * steps, decay_rule=obj.weight_decay_rule,
                                 held=obj.held)
    state, p = tx.init(params), params
    for step in range(steps + 1):
        u, state = jax.jit(tx.update)(g0, state, p)
        p = optax.apply_updates(p, u)
        moved = not np.array_equal(p["head"]["last_layer"]["v"], params["head"]["last_layer"]["v"])
        assert moved == (step >= steps), step
    assert not np.array_equal(p["head"]["mlp_0"]["kernel"], params["head"]["mlp_0"]["kernel"])
    # the teacher gets no gradient from the loss
    g_extra = jax.grad(lambda e: obj.loss(params, e, b, jax.random.key(1), jnp.int32(50))[0])(extra)
    assert not any(np.asarray(x).any() for x in jax.tree.leaves(g_extra["ema_teacher"]["params"]))
    # after_update: teacher = m teacher + (1 - m) student with the cosine momentum
    moved = jax.tree.map(lambda x: x + 1.0, params)
    out = obj.after_update(moved, extra, jnp.int32(3))
    m = 1 - (1 - 0.996) * (math.cos(math.pi * 3 / obj.total_steps) + 1) / 2
    leaf = jax.tree.leaves(extra["ema_teacher"]["params"])[0]
    np.testing.assert_allclose(jax.tree.leaves(out["ema_teacher"]["params"])[0], m * leaf + (1 - m) * (leaf + 1.0),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("on_device", [False, True])
def test_sharded_step_equals_single_device_centers_and_losses(on_device):
    cfg = esvit_config(photometric_on_device=on_device)
    cfg.optim.name, cfg.optim.lr, cfg.optim.b1 = "sgd", 0.1, 0.9
    _, data = batches(cfg, 2)
    single, losses1, _ = run_steps(sharding.make_mesh(1, 1, 1, jax.devices()[:1]), cfg, data)
    multi, losses8, _ = run_steps(sharding.make_mesh(8, 1, 1), cfg, data)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    for key in ("center", "center_grid"):
        np.testing.assert_allclose(np.asarray(multi["extra"][key]), np.asarray(single["extra"][key]),
                                   rtol=1e-5, atol=1e-7)
        assert np.abs(np.asarray(single["extra"][key])).sum() > 0


@pytest.mark.parametrize("region", [False, True])
def test_esvit_trains_through_the_loop_with_knn_and_pictures(tmp_path, region):
    # DINO alone runs with DINOv2's remedies, DINO's epochs, the student's k-NN and the
    # photometric chain on the device as well
    # (EsViT with the region term on content tokens only)
    remedies = dict(region_min_std=0.1) if region else dict(sinkhorn_iters=3, koleo_weight=0.1,
                                                            photometric_on_device=True)
    cfg = esvit_config(region=region, **remedies)
    cfg.total_steps, cfg.eval_every, cfg.checkpoint_every = 10, 5, 10
    if not region:
        cfg.data.drop_remainder = True
        cfg.evals.knn_student = dict(type="knn", ks=(5,), network="student")
    out = train.run(cfg, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    knn = [r["eval/knn/top1_k5"] for r in rows if "eval/knn/top1_k5" in r]
    assert len(knn) == 2 and all(0.0 <= a <= 1.0 for a in knn)
    student_knn = [r["eval/knn_student/top1_k5"] for r in rows if "eval/knn_student/top1_k5" in r]
    assert len(student_knn) == (0 if region else 2)
    assert ("train/koleo" in rows[0]) == (not region)
    assert ("train/region_loss" in rows[0]) == region
    if region:   # about half of a digit crop's cells hold ink
        assert 0.05 < rows[0]["train/region/content_tokens"] < 0.95
    # DINO's collapse checks are logged with every training row: H(q) within [0, ln K]
    k = cfg.esvit.out_dim
    for head in ("view", "region") if region else ("view",):
        assert 0.0 <= rows[0][f"train/{head}/teacher_entropy"] <= np.log(k) + 1e-4
        assert rows[0][f"train/{head}/center_norm"] >= 0.0
    assert rows[0]["train/view/kl"] >= -1e-4 and rows[0]["train/backbone_grad_norm"] > 0.0
    assert np.isfinite(out["train/loss"])
    assert os.path.isfile(tmp_path / "esvit_correspondence_000010.png")
    ink = [r["eval/esvit_correspondence/ink_top10"] for r in rows if "eval/esvit_correspondence/ink_top10" in r]
    assert len(ink) == 2 and all(0.0 <= a <= 1.0 for a in ink)
    # downstream protocols read the EMA teacher
    run = load_run(str(tmp_path))
    teacher = checkpoint.load_params(str(tmp_path), path=("extra", "ema_teacher", "params"))
    np.testing.assert_array_equal(jax.tree.leaves(run.backbone_variables["params"])[0],
                                  jax.tree.leaves(teacher["backbone"])[0])
    student = checkpoint.load_params(str(tmp_path))
    assert not np.allclose(jax.tree.leaves(student["backbone"])[0], jax.tree.leaves(teacher["backbone"])[0])


@pytest.mark.parametrize("model_name,overrides", [
    ("swin_tiny_patch4_window7_224", dict(patch_size=2, window_size=2, width=16, depths=(1, 1),
                                          num_heads=(2, 2))),
    ("cvt_13_224", dict(widths=(8, 16, 16), depths=(1, 1, 1), num_heads=(1, 2, 2), patch_sizes=(3, 3, 3),
                        patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1))),
])
def test_other_backbones_give_region_tokens(model_name, overrides):
    cfg = esvit_config(global_size=16, local_size=8, region_min_std=0.1)
    cfg.model_name = model_name
    cfg.model = overrides
    plan, obj, b, params, extra = fresh(cfg)
    loss, (metrics, new_extra) = jax.jit(obj.loss)(params, extra, b, jax.random.key(1), jnp.int32(0))
    low, high = init_loss_range(OUT_DIM, BOTTLENECK)
    assert low < float(loss) < high, (low, float(loss), high)
    assert np.isfinite(float(metrics["region_loss"]))


def test_bad_esvit_configs():
    cfg = get_config()   # supervised: no student_variables, so no student k-NN
    cfg.evals.knn = dict(type="knn", network="student")
    with pytest.raises(ConfigError, match="student_variables"):
        validate(cfg)
    with pytest.raises(ConfigError, match="region_min_std"):
        validate(esvit_config(region_min_std=-1.0))
    cfg = esvit_config(sinkhorn_iters=-1)
    with pytest.raises(ConfigError, match="sinkhorn_iters"):
        validate(cfg)
    cfg = esvit_config()
    cfg.data.train_transform = "normalize('mnist')"
    with pytest.raises(ConfigError, match="normalize\\('none'\\)"):
        validate(cfg)
    cfg = esvit_config(student_temp=0.0)
    with pytest.raises(ConfigError, match="temperatures"):
        validate(cfg)
    cfg = esvit_config()
    cfg.esvit.unknown = 1
    with pytest.raises(ConfigError, match="unknown key"):
        validate(cfg)


def test_ink_match_fraction_closed_form():
    """Ink only in the top-left quarter of view a and the bottom-right of view b (2 x 2 token grids):
    of the pairs (0->3), (0->0), (1->3) only the first lies on ink in both views."""
    a, b = np.zeros((8, 8, 1), np.float32), np.zeros((8, 8, 1), np.float32)
    a[1, 2], b[6, 5] = 1.0, 0.8
    pairs = [(0, 3, 0.9), (0, 0, 0.8), (1, 3, 0.7)]
    assert viz.ink_match_fraction(a, b, pairs, 4, 4) == pytest.approx(1 / 3)
    # normalised views are un-normalised first: 0.8 ink normalised with mean 0.5, std 0.25 is 1.2
    assert viz.ink_match_fraction((a - 0.5) / 0.25, (b - 0.5) / 0.25, pairs, 4, 4, 0.5, 0.25) \
        == pytest.approx(1 / 3)
    assert viz.ink_match_fraction(a, b, pairs, 4, 4, threshold=0.9) == 0.0   # b's ink is 0.8
    assert viz.ink_match_fraction(a, b, [(0, 3, 1.0)], 16, 4) == 0.0          # 4 x 4 grid: cell 0 is empty
    with pytest.raises(ValueError, match="pair"):
        viz.ink_match_fraction(a, b, [], 4, 4)


# ------------------------------------------------------------------ iBOT's masked patch target

def test_masked_patch_loss_closed_form():
    """Per crop and image: the mean CE over its masked patches (0 when none), then the batch mean,
    then the mean over the crops; written out with explicit loops."""
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
    t = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
    q = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    mask = rng.random((2, 3, 5)) < 0.5
    mask[1, 2] = False                      # an unmasked crop adds 0 to its batch mean
    tau = 0.1
    want = 0.0
    for v in range(2):
        per_image = []
        for b in range(3):
            logp = s[v, b] / tau - np.log(np.exp(s[v, b] / tau).sum(-1, keepdims=True))
            ce = -(q[v, b] * logp).sum(-1)
            per_image.append(ce[mask[v, b]].sum() / max(mask[v, b].sum(), 1))
        want += np.mean(per_image) / 2
    got = dino_losses.masked_patch_loss(jnp.asarray(s), jnp.asarray(q), jnp.asarray(mask), tau)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_vit_mask_token_replaces_masked_patch_embeddings():
    vit = models.create("vit_tiny_patch2_8", num_classes=0, width=16, depth=1, num_heads=2, mlp_dim=32,
                        in_channels=1, image_size=8)
    images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    params = vit.init(jax.random.key(1), images)["params"]
    token = jnp.full((1, 1, 16), 3.0)
    mask = jnp.zeros((2, 16), bool).at[0, 5].set(True).at[1, 0].set(True)
    plain, _ = vit.apply({"params": params}, images, method=vit.embed)
    masked, _ = vit.apply({"params": params}, images, patch_mask=mask, mask_token=token, method=vit.embed)
    pos = vit.apply({"params": params}, (4, 4), method=vit.pos_embed_for)[:, 1:]
    np.testing.assert_allclose(masked[0, 5], 3.0 + pos[0, 5], rtol=1e-6)
    np.testing.assert_allclose(masked[1, 0], 3.0 + pos[0, 0], rtol=1e-6)
    keep = ~np.asarray(mask)
    np.testing.assert_array_equal(np.asarray(masked)[keep], np.asarray(plain)[keep])
    # nothing masked: the plain forward
    out0, _ = vit.apply({"params": params}, images)
    out1, _ = vit.apply({"params": params}, images, patch_mask=jnp.zeros((2, 16), bool), mask_token=token)
    np.testing.assert_allclose(out1, out0, rtol=1e-6)
    with pytest.raises(ValueError, match="mask_token"):
        vit.apply({"params": params}, images, patch_mask=mask, method=vit.embed)


def test_ibot_masks_loss_and_gradient_to_the_mask_token():
    cfg = esvit_config(region=False, mim_weight=1.0, mim_prob=1.0, mim_ratio=(0.25, 0.5), mim_min_block=2)
    plan, obj, b, params, extra = fresh(cfg)
    mask = np.asarray(b["mim_mask"])
    assert mask.shape == (16, 2, 16) and mask.dtype == bool        # 8-px crops, 2-px patches
    counts = mask.sum(-1)
    assert counts.min() >= 4 and counts.max() <= 8                  # 25-50% of 16, every crop masked
    assert params["mask_token"].shape == (1, 1, 16) and not np.asarray(params["mask_token"]).any()
    loss, (metrics, new_extra) = jax.jit(obj.loss)(params, extra, b, jax.random.key(1), jnp.int32(0))
    assert np.isfinite(float(metrics["mim_loss"])) and float(metrics["mim_loss"]) > 0
    np.testing.assert_allclose(float(loss), float(metrics["view_loss"]) + float(metrics["mim_loss"]), rtol=1e-5)
    assert np.abs(np.asarray(new_extra["center_patch"])).sum() > 0
    assert {"patch/teacher_entropy", "patch/center_norm"} <= set(metrics)
    g = jax.grad(lambda p: obj.loss(p, extra, b, jax.random.key(1), jnp.int32(0))[0])(params)
    assert np.asarray(g["mask_token"]).any()
    # mim_prob 0: no crop is masked, the patch term is 0 and the loss is DINO's
    cfg0 = esvit_config(region=False, mim_weight=1.0, mim_prob=0.0)
    _, obj0, b0, p0, e0 = fresh(cfg0)
    assert not np.asarray(b0["mim_mask"]).any()
    loss0, (m0, _) = jax.jit(obj0.loss)(p0, e0, b0, jax.random.key(1), jnp.int32(0))
    assert float(m0["mim_loss"]) == 0.0 and float(loss0) == pytest.approx(float(m0["view_loss"]))


def test_bad_ibot_configs():
    with pytest.raises(ConfigError, match="choose one patch-level loss"):
        validate(esvit_config(region=True, mim_weight=1.0))
    with pytest.raises(ConfigError, match="mim_ratio"):
        validate(esvit_config(region=False, mim_weight=1.0, mim_ratio=(0.5, 0.2)))
    cfg = esvit_config(region=False, mim_weight=1.0)
    cfg.model_name = "swin_tiny_patch4_window7_224"
    cfg.model = dict(patch_size=2, window_size=2, width=16, depths=(1, 1), num_heads=(2, 2))
    with pytest.raises(ConfigError, match="needs a ViT backbone"):
        validate(cfg)


def test_photometric_on_device_sends_uint8_and_gives_the_host_loss():
    """esvit.photometric_on_device: the batch carries uint8 crops and their photometric rows (a
    quarter of the float bytes), the step finishes them, and the loss is the host path's within
    the chains' pixel tolerance (tests/test_photometric.py)."""
    kw = dict(pixel_stats="mnist", jitter_p=0.8, gray_p=0.2, blur_p=(1.0, 0.1, 0.5), solarize_p=(0.0, 0.2, 0.0))
    host = esvit_config(**kw)
    host.data.eval_transform = "normalize('mnist')"
    dev = esvit_config(photometric_on_device=True, **kw)
    dev.data.eval_transform = "normalize('mnist')"
    _, obj_h, b_h, params, extra = fresh(host)
    _, obj_d, b_d, params_d, _ = fresh(dev)
    assert b_d["global_crops"].dtype == jnp.uint8 and b_d["local_crops"].dtype == jnp.uint8
    assert b_d["global_photo"].shape == (16, 2, 13) and b_d["local_photo"].shape == (16, 2, 13)
    assert b_d["global_crops"].nbytes * 4 == b_h["global_crops"].nbytes
    for a, c in zip(jax.tree.leaves(params), jax.tree.leaves(params_d)):   # init reads shapes only
        np.testing.assert_array_equal(a, c)
    finished = np.asarray(jax.jit(lambda b: obj_d._crops(b, "global"))(b_d))
    assert np.abs(finished - np.asarray(b_h["global_crops"])).mean() < 0.008 / get_stats("mnist")[1][0]
    args = (params, extra)
    l_h, _ = jax.jit(obj_h.loss)(*args, b_h, jax.random.key(1), jnp.int32(0))
    l_d, _ = jax.jit(obj_d.loss)(*args, b_d, jax.random.key(1), jnp.int32(0))
    assert abs(float(l_d) - float(l_h)) < 0.02 * abs(float(l_h)), (float(l_d), float(l_h))
