"""EVA: the masked-feature student, its loss and init, and the objective in the training loop."""
from __future__ import annotations

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax import checkpoint, convert, objectives, teachers, train
from vit_jax import state as state_lib
from vit_jax.runs import load_run
from vit_jax.models.eva import (MaskedFeatureStudent, cosine_per_token, eva_init,
                                masked_cosine_loss, per_example_masked_cosine_loss,
                                pooled_cosine_loss, standardize_targets)
from vit_jax.models.vit import ViT
from vit_jax.validate import ConfigError, validate

sys.path.insert(0, os.path.dirname(__file__))
from tiny_config import get_config  # noqa: E402


def _np_cos_loss(pred, target, mask):
    pred, target, mask = (np.asarray(x, np.float64) for x in (pred, target, mask))
    cos = (pred * target).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1))
    return -(cos * mask).sum() / mask.sum(), -(cos * mask).sum(1) / mask.sum(1)


def test_masked_cosine_loss_matches_numpy_and_closed_forms():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
    mask = rng.random((3, 5)) < 0.5
    mask[:, 0] = True
    want, want_per = _np_cos_loss(pred, target, mask)
    np.testing.assert_allclose(masked_cosine_loss(pred, target, mask), want, atol=1e-6)
    np.testing.assert_allclose(per_example_masked_cosine_loss(pred, target, mask), want_per, atol=1e-6)
    assert float(masked_cosine_loss(target, 3.0 * target, mask)) == pytest.approx(-1.0, abs=1e-6)
    assert float(masked_cosine_loss(-target, target, mask)) == pytest.approx(1.0, abs=1e-6)
    # unmasked tokens do not count
    pred2 = np.where(mask[..., None], pred, rng.normal(size=pred.shape)).astype(np.float32)
    np.testing.assert_allclose(masked_cosine_loss(pred2, target, mask), want, atol=1e-6)
    assert cosine_per_token(pred, target).shape == (3, 5)


def test_standardized_targets_lose_the_shared_direction():
    """Each channel over the batch's tokens: mean 0, variance 1 (float64 NumPy); a direction shared
    by every token, which alone scores a high cosine, is gone."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4, 6, 8)) * rng.uniform(0.5, 3.0, size=8)
    shared = 50.0 * rng.normal(size=8)
    got = np.asarray(standardize_targets(jnp.asarray(noise + shared, jnp.float32)), np.float64)
    want = (noise - noise.mean((0, 1))) / noise.std((0, 1))
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(got.mean((0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(got.var((0, 1)), 1, atol=1e-4)
    mask = np.ones((4, 6), bool)
    raw = noise + shared   # predicting only the shared direction scores nearly 1 on the raw targets
    assert float(masked_cosine_loss(np.broadcast_to(shared, raw.shape), raw, mask)) < -0.9
    assert abs(float(masked_cosine_loss(np.broadcast_to(shared, raw.shape), got, mask))) < 0.2


@pytest.fixture(scope="module")
def student():
    enc = ViT(num_classes=0, patch_size=4, width=32, depth=3, num_heads=4, mlp_dim=64, image_size=16)
    model = MaskedFeatureStudent(encoder=enc, target_dim=24)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)
    mask = jnp.zeros((2, 16), bool)
    params = model.init(jax.random.key(0), images, mask)["params"]
    return model, params, images


def test_masked_patches_are_replaced_by_the_mask_token(student):
    model, params, images = student
    mask = np.zeros((2, 16), bool)
    mask[:, [0, 5, 6, 15]] = True
    fwd = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m))
    out = fwd(params, images, mask)
    assert out.shape == (2, 16, 24) and out.dtype == jnp.float32
    # new pixels inside masked patch 5 (row 1, col 1): nothing changes
    changed = images.at[:, 4:8, 4:8].set(9.0)
    np.testing.assert_allclose(fwd(params, changed, mask), out, atol=1e-6)
    # ... but they do when that patch is visible
    assert not np.allclose(fwd(params, changed, np.zeros_like(mask)), fwd(params, images, np.zeros_like(mask)))
    with pytest.raises(ValueError, match="patch_mask has shape"):
        model.apply({"params": params}, images, mask[:, :8])


def test_class_token_prediction_and_its_loss(student):
    """with_cls=True: the class token through the same head, first; the patch predictions are
    those of with_cls=False; pooled_cosine_loss is -cos(pred, mean target token)."""
    model, params, images = student
    mask = np.zeros((2, 16), bool)
    mask[:, 3:9] = True
    both = MaskedFeatureStudent(encoder=model.encoder, target_dim=24, with_cls=True)
    out = both.apply({"params": params}, images, mask)
    assert out.shape == (2, 17, 24)
    np.testing.assert_allclose(out[:, 1:], model.apply({"params": params}, images, mask), atol=1e-6)
    rng = np.random.default_rng(4)
    pred, target = rng.normal(size=(2, 24)), rng.normal(size=(2, 16, 24))
    mean = target.mean(1)
    want = -(pred * mean).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(mean, axis=-1))
    np.testing.assert_allclose(pooled_cosine_loss(pred, target), want, atol=1e-6)
    assert float(pooled_cosine_loss(mean, target)[0]) == pytest.approx(-1.0, abs=1e-6)
    no_cls = MaskedFeatureStudent(encoder=ViT(num_classes=0, patch_size=4, width=32, depth=1, num_heads=4,
                                              mlp_dim=64, image_size=16, class_token=False, pool="gap"),
                                  target_dim=24, with_cls=True)
    with pytest.raises(ValueError, match="needs an encoder with a class token"):
        no_cls.init(jax.random.key(0), images, mask)


def test_eva_init_truncated_normal_and_rescaled_outputs(student):
    model, params, _ = student
    std = 0.02
    p = eva_init(params, jax.random.key(3), std)
    kernel = np.asarray(p["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"])
    assert np.abs(kernel).max() <= std + 1e-7
    # N(0, std) truncated at +-1 std has std * 0.5396
    assert kernel.std() == pytest.approx(std * 0.5396, rel=0.05)
    for i in range(3):
        for path in (("attn", "out"), ("mlp", "fc2")):
            k = np.asarray(p["encoder"][f"blocks_{i}"][path[0]][path[1]]["kernel"])
            bound = std / math.sqrt(2 * (i + 1))
            assert np.abs(k).max() <= bound + 1e-7
            assert np.abs(k).max() > 0.9 * bound
    for leaf in ("mask_token",):
        assert np.abs(np.asarray(p[leaf])).max() <= std + 1e-7
    assert not np.asarray(p["head"]["bias"]).any()
    np.testing.assert_array_equal(p["encoder"]["norm"]["scale"], 1.0)


# ---------------------------------------------------------------------- the objective in the loop

@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A tiny random HF ViTModel (patch 3, RGB) as the teacher of an 8x8 / patch-2 student."""
    folder = tmp_path_factory.mktemp("teacher") / "vit"
    t = ViT(num_classes=0, patch_size=3, width=24, depth=1, num_heads=2, mlp_dim=48, image_size=12)
    convert.save_hf(t, t.init(jax.random.key(1), jnp.zeros((1, 12, 12, 3))), folder)
    return str(folder)


def eva_config(teacher_folder: str, **kw):
    c = get_config()
    c.objective = "eva"
    c.eva = objectives.default_config("eva")
    c.eva.teacher = "hf:" + teacher_folder
    c.eva.mask_ratio = 0.5
    c.eva.min_block = 2
    c.total_steps = 16
    c.eval_every = 8
    c.checkpoint_every = 8
    for k, v in kw.items():
        c[k] = v
    return c


def test_loss_at_init_near_zero_teacher_gets_no_gradient(teacher_folder):
    plan = validate(eva_config(teacher_folder))
    obj = plan.objective
    assert plan.example["patch_mask"].shape == (16,) and plan.example["patch_mask"].sum() == 8
    assert obj.teacher.input_size(obj.grid) == (12, 12)      # 4x4 student grid, /3 teacher
    batch = {k: jnp.asarray(np.stack([obj.prepare_example(dict(ex), np.random.default_rng(i))[k]
                                      for i, ex in enumerate(plan.train_transform(dict(plan.train_source[j]),
                                                                                 np.random.default_rng(j))
                                                             for j in range(32))]))
             for k in ("image", "patch_mask")}
    params, extra = jax.jit(obj.init)(jax.random.key(0), {k: v[:1] for k, v in batch.items()})
    extra = state_lib.put_frozen_extra(obj, extra)
    assert extra["teacher"]["embedding"]["kernel"].any()
    loss_fn = jax.jit(lambda p, e: obj.loss(p, e, batch, jax.random.key(1), jnp.zeros((), jnp.int32))[0])
    # At init the head is random and symmetric: flipping its sign flips the loss, so its mean
    # over inits is 0; one init gives |loss| ~ 1/sqrt(target dim) (here 24).
    flipped = dict(params, head=jax.tree.map(jnp.negative, params["head"]))
    assert float(loss_fn(flipped, extra)) == pytest.approx(-float(loss_fn(params, extra)), abs=1e-6)
    inits = [loss_fn(jax.jit(obj.init)(jax.random.key(s), {k: v[:1] for k, v in batch.items()})[0], extra)
             for s in range(1, 9)]
    assert abs(float(np.mean(inits))) < 0.15 and max(abs(float(x)) for x in inits) < 0.6, inits
    g_teacher = jax.grad(loss_fn, argnums=1)(params, extra)
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(g_teacher))
    g_student = jax.grad(loss_fn)(params, extra)
    assert np.asarray(g_student["mask_token"]).any()
    # three optimizer steps through the loop's step function: the student moves, the teacher not
    tx = optax.adamw(1e-3)
    step_fn = jax.jit(train.make_train_step(obj, tx, lambda s: 1e-3, 1, 0.0))
    state = state_lib.create(params, extra, tx, jax.random.key(2))
    for _ in range(3):
        state, metrics = step_fn(state, batch)
        assert bool(metrics["finite"])
    for a, b in zip(jax.tree.leaves(state["extra"]), jax.tree.leaves(extra)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(state["params"]["head"]["kernel"], params["head"]["kernel"])


def test_target_norm_and_native_view_reach_the_loss(teacher_folder):
    """eva.target_norm="batch" and eva.teacher_view="native" are what the loss regresses."""
    plan = validate(eva_config(teacher_folder, eva=dict(objectives.default_config("eva"), teacher="hf:" + teacher_folder,
                                                        mask_ratio=0.5, min_block=2, target_norm="batch",
                                                        teacher_view="native")))
    obj = plan.objective
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
    extra = {"teacher": obj.teacher.variables["params"]}
    raw = obj.teacher.targets(extra["teacher"], images, *obj.student_stats, obj.grid)
    np.testing.assert_allclose(obj._targets(extra, images), standardize_targets(raw), atol=1e-6)
    assert obj.teacher.view == "native" and obj.teacher.input_size(obj.grid) == (12, 12)


def test_class_token_target_adds_its_weighted_term(teacher_folder):
    """eva.cls_weight > 0: loss = masked patch loss + cls_weight x pooled_cosine_loss, logged apart."""
    c = eva_config(teacher_folder)
    c.eva.cls_weight = 0.5
    obj = validate(c).objective
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32),
             "patch_mask": jnp.asarray(np.stack([obj.prepare_example({}, rng)["patch_mask"] for _ in range(4)]))}
    params, _ = obj.init(jax.random.key(0), batch)
    extra = {"teacher": obj.teacher.variables["params"]}
    loss, (metrics, _) = obj.loss(params, extra, batch, jax.random.key(1), jnp.zeros((), jnp.int32))
    pred = obj.model.apply({"params": params}, batch["image"], batch["patch_mask"])
    targets = obj._targets(extra, batch["image"])
    want_patches = _np_cos_loss(pred[:, 1:], targets, batch["patch_mask"])[0]
    want_cls = np.mean(pooled_cosine_loss(pred[:, 0], targets))
    np.testing.assert_allclose(metrics["loss_patches"], want_patches, atol=1e-5)
    np.testing.assert_allclose(metrics["loss_cls"], want_cls, atol=1e-6)
    np.testing.assert_allclose(loss, want_patches + 0.5 * want_cls, atol=1e-5)
    ev = obj.eval_metrics(params, extra, batch)
    assert ev["loss"].shape == (4,) and set(ev) == {"loss", "loss_patches", "loss_cls"}
    c.eva.cls_weight = -1.0
    with pytest.raises(ConfigError, match="cls_weight=-1.0 must be >= 0"):
        validate(c)
    c.eva.cls_weight = 1.0
    c.model.class_token = False
    c.model.pool = "gap"
    with pytest.raises(ConfigError, match="has none: set model.class_token=True"):
        validate(c)


def test_eva_trains_through_the_loop(teacher_folder, tmp_path):
    out = train.run(eva_config(teacher_folder), str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    evals = [r["eval/test/loss"] for r in rows if "eval/test/loss" in r]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert evals[-1] < evals[0] - 0.02 and losses[-1] < losses[0] - 0.1, (evals, losses)
    params = checkpoint.load_params(str(tmp_path / "run"))
    assert set(params) == {"encoder", "mask_token", "head"}
    assert out["step"] == 16
    # the finished run as objects, and as a teacher for another run
    run = load_run(str(tmp_path / "run"))
    assert run.config.objective == "eva" and "teacher" in run.extra
    t = teachers.load("workdir:" + str(tmp_path / "run"))
    assert t.dim == 16 and not t.project
    np.testing.assert_array_equal(t.variables["params"]["embedding"]["kernel"],
                                  params["encoder"]["embedding"]["kernel"])


def test_bad_teacher_specs_fail_clearly(teacher_folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown teacher"):
        validate(eva_config(teacher_folder, eva=dict(objectives.default_config("eva"), teacher="clip")))
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        validate(eva_config(teacher_folder, eva=dict(objectives.default_config("eva"),
                                                      teacher="hf:" + str(tmp_path))))
    # an RGB student cannot be taught by a 1-channel teacher
    grey = ViT(num_classes=0, patch_size=2, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8,
               in_channels=1)
    convert.save_hf(grey, grey.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))), tmp_path / "grey")
    t = teachers.load("hf:" + str(tmp_path / "grey"))
    with pytest.raises(teachers.TeacherError, match="1-channel images but the student's have 3"):
        t.check_student((4, 4), 3)
    with pytest.raises(ConfigError, match="teacher view 'grid'"):
        validate(eva_config(teacher_folder, eva=dict(objectives.default_config("eva"),
                                                      teacher="hf:" + teacher_folder, teacher_view="grid")))
    with pytest.raises(ConfigError, match="eva.target_norm='layer'"):
        validate(eva_config(teacher_folder, eva=dict(objectives.default_config("eva"),
                                                      teacher="hf:" + teacher_folder, target_norm="layer")))
    with pytest.raises(ConfigError, match="mask ratio"):
        validate(eva_config(teacher_folder, eva=dict(objectives.default_config("eva"),
                                                      teacher="hf:" + teacher_folder, mask_ratio=1.5)))
