"""DeiT distillation: the distillation token on the ViT (layout, counts, Hugging Face parity), the
losses against NumPy / torch closed forms, the classifier teacher, bad configs, and the "distill"
objective through the training loop with a tiny ResNet teacher run made here."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, DeiTModel

from tests.hf_parity import close, images as hf_images, perturb, save
from tests.tiny_config import get_config
from vit_jax import checkpoint, convert, init_from, models, objectives, teachers, train
from vit_jax.convert.weights import ConversionError
from vit_jax.models.vit import ViT
from vit_jax.objectives import distill_losses as losses
from vit_jax.objectives.distill import block_qkv
from vit_jax.runs import load_run
from vit_jax.validate import ConfigError, validate

TINY = dict(num_classes=5, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=16,
            head_init_std=0.02, dist_token=True)


def _close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol, rtol=0)


# ------------------------------------------------------------------------------ the model

@pytest.mark.parametrize("name,expected", [("deit_tiny_distilled_patch16_224", 5_910_800),
                                           ("deit_small_distilled_patch16_224", 22_436_432),
                                           ("deit_base_distilled_patch16_224", 87_338_192)])
def test_deit_distilled_param_counts(name, expected):
    assert models.param_count(models.create(name), (224, 224, 3)) == expected


def test_token_layout_heads_and_inference_average():
    model = ViT(**TINY)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    p = variables["params"]
    assert p["pos_embed"].shape == (1, 2 + 16, 32) and p["dist_token"].shape == (1, 1, 32)
    assert p["head_dist"]["kernel"].shape == (32, 5) and model.num_prefix_tokens == 2
    # embed: the prefix is [class + pos row 0, distillation + pos row 1]; patches get rows 2..
    patches, prefix = model.apply(variables, x, method=ViT.embed)
    assert patches.shape == (2, 16, 32) and prefix.shape == (2, 2, 32)
    _close(prefix[0, 0], p["cls_token"][0, 0] + p["pos_embed"][0, 0])
    _close(prefix[0, 1], p["dist_token"][0, 0] + p["pos_embed"][0, 1])
    bare, _ = model.apply(variables, x, with_pos=False, method=ViT.embed)
    _close(patches - bare, jnp.broadcast_to(p["pos_embed"][:, 2:], patches.shape))
    # head reads token 0, head_dist token 1; out is their average (train and eval alike)
    for train_mode in (False, True):
        out, aux = model.apply(variables, x, train=train_mode)
        enc = aux["encoded"]
        assert enc.shape == (2, 18, 32)
        dense = lambda q, t: t @ q["kernel"] + q["bias"]  # noqa: E731
        _close(aux["logits_cls"], dense(p["head"], enc[:, 0]))
        _close(aux["logits_dist"], dense(p["head_dist"], enc[:, 1]))
        _close(out, (aux["logits_cls"] + aux["logits_dist"]) / 2)
    assert not np.allclose(aux["logits_cls"], aux["logits_dist"])
    # the distillation token moves only through its own path: changing it changes both heads
    moved = jax.tree.map(lambda a: a, variables)
    moved["params"] = dict(p, dist_token=p["dist_token"] + 1.0)
    _, aux2 = model.apply(moved, x)
    assert not np.allclose(aux2["logits_dist"], aux["logits_dist"])
    # a fixed sin-cos table gets a zero row for each prefix token
    sc = ViT(**{**TINY, "posemb": "sincos2d"})
    table = sc.apply(sc.init(jax.random.key(0), x), (4, 4), method=sc.pos_embed_for)
    assert table.shape == (1, 18, 32) and not np.asarray(table[0, :2]).any() and np.asarray(table[0, 2]).any()
    # without a head: out is the class token's features, no head_dist
    feats = ViT(**{**TINY, "num_classes": 0})
    fv = feats.init(jax.random.key(0), x)
    assert "head_dist" not in fv["params"]
    f_out, f_aux = feats.apply(fv, x)
    _close(f_out, f_aux["encoded"][:, 0])
    assert "logits_dist" not in f_aux


def test_distillation_token_needs_a_class_token():
    with pytest.raises(ValueError, match="dist_token=True needs class_token=True and pool='token'"):
        ViT(**{**TINY, "class_token": False, "pool": "gap"})
    with pytest.raises(ValueError, match="dist_token=True needs class_token=True"):
        models.create("deit_tiny_distilled_patch16_224", class_token=False)
    with pytest.raises(ValueError, match="pool='gap'"):
        models.create("vit_tiny_patch4_28", dist_token=True, pool="gap")
    m = models.create("deit_small_distilled_patch8_32", num_classes=3)
    assert (m.dist_token, m.width, m.patch_size, m.image_size) == (True, 384, 8, 32)
    with pytest.raises(ConversionError, match="dist_token=True"):
        convert.save_hf(ViT(**TINY), ViT(**TINY).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))), "/tmp/x")
    c = get_config()   # MAE's encoder has one prefix token: a distillation token is refused
    c.objective, c.model.dist_token = "mae", True
    with pytest.raises(ConfigError, match="dist_token=True.*conflicts with MAE"):
        validate(c)


def test_hf_deit_with_teacher_parity(tmp_path):
    torch.manual_seed(0)
    cfg = DeiTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     image_size=32, patch_size=8, num_labels=7, layer_norm_eps=1e-12)
    hf = perturb(DeiTForImageClassificationWithTeacher(cfg), 1)
    x, xt = hf_images(0, 32)
    with torch.no_grad():
        want = hf(xt)
        hidden = hf.deit(xt).last_hidden_state
    module, variables = convert.load_hf(save(hf, tmp_path / "deit"))
    assert module.dist_token and module.num_classes == 7
    out, aux = module.apply(variables, jnp.asarray(x))
    close(out, want.logits)
    close(aux["logits_cls"], want.cls_logits)
    close(aux["logits_dist"], want.distillation_logits)
    close(aux["encoded"], hidden)
    # DeiTModel: the backbone alone
    body = perturb(DeiTModel(cfg, add_pooling_layer=False), 2)
    with torch.no_grad():
        want_body = body(xt).last_hidden_state
    module, variables = convert.load_hf(save(body, tmp_path / "body"))
    assert module.num_classes == 0 and module.dist_token
    close(module.apply(variables, jnp.asarray(x))[1]["encoded"], want_body)


def test_init_from_moves_a_backbone_between_plain_and_distilled_vits():
    x = jnp.zeros((1, 16, 16, 3))
    deit = ViT(**TINY).init(jax.random.key(0), x)["params"]
    plain = ViT(**{**TINY, "dist_token": False}).init(jax.random.key(1), x)["params"]
    merged, report = init_from.merge(deit, plain)       # plain ViT -> DeiT student
    assert sorted(report["fresh"]) == ["dist_token", "head_dist/bias", "head_dist/kernel"]
    assert "pos_embed (resized)" in report["loaded"]
    pe = merged["pos_embed"]
    _close(pe[:, 0], plain["pos_embed"][:, 0])           # the class row
    _close(pe[:, 1], deit["pos_embed"][:, 1])            # the distillation row stays fresh
    _close(pe[:, 2:], plain["pos_embed"][:, 1:])         # the grid
    _close(merged["blocks_0"]["attn"]["query"]["kernel"], plain["blocks_0"]["attn"]["query"]["kernel"])
    back, report = init_from.merge(plain, deit)          # DeiT student -> plain ViT
    _close(back["pos_embed"], np.delete(np.asarray(deit["pos_embed"]), 1, axis=1))
    assert {"dist_token", "head_dist/kernel"} <= set(report["unused"])
    mae_like = {k: v for k, v in plain.items() if k != "pos_embed"}   # fixed sin-cos in the source
    merged, _ = init_from.merge(deit, mae_like)
    assert not np.asarray(merged["pos_embed"][:, :2]).any() and np.asarray(merged["pos_embed"][:, 2]).any()


# ------------------------------------------------------------------------------ the losses

def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_deit_losses_against_numpy_and_torch():
    rng = np.random.default_rng(0)
    s_cls, s_dist, t = (rng.normal(size=(6, 5)) * 3 for _ in range(3))
    y = rng.integers(0, 5, 6)
    onehot = np.eye(5)[y]
    ce = -(onehot * _log_softmax(s_cls)).sum(-1).mean()
    hard = -_log_softmax(s_dist)[np.arange(6), t.argmax(-1)].mean()
    tau = 2.5
    lt, ls = _log_softmax(t / tau), _log_softmax(s_dist / tau)
    soft = (np.exp(lt) * (lt - ls)).sum() * tau ** 2 / s_dist.size
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    assert float(losses.hard_distillation(f32(s_dist), f32(t))) == pytest.approx(hard, rel=1e-5)
    assert float(losses.soft_distillation(f32(s_dist), f32(t), tau)) == pytest.approx(soft, rel=1e-5)
    # DeiT's losses.py term, as torch computes it
    ref = F.kl_div(F.log_softmax(torch.tensor(s_dist / tau), dim=1), F.log_softmax(torch.tensor(t / tau), dim=1),
                   reduction="sum", log_target=True) * tau * tau / s_dist.size
    assert soft == pytest.approx(float(ref), rel=1e-9)
    for kind, want in (("hard", 0.3 * ce + 0.7 * hard), ("soft", 0.3 * ce + 0.7 * soft), ("none", ce)):
        total, base, term = losses.deit_loss(f32(s_cls), f32(s_dist), f32(onehot), f32(t), kind, 0.7, tau)
        assert float(total) == pytest.approx(want, rel=1e-5) and float(base) == pytest.approx(ce, rel=1e-5)
    # closed forms: a student equal to the teacher has KL 0; the 0.5 / 0.5 hard loss of DeiT
    assert float(losses.soft_distillation(f32(t), f32(t), tau)) == pytest.approx(0.0, abs=1e-6)
    total, _, _ = losses.deit_loss(f32(s_cls), f32(s_dist), f32(onehot), f32(t), "hard", 0.5, 1.0)
    assert float(total) == pytest.approx(0.5 * ce + 0.5 * hard, rel=1e-5)


def test_relations_against_numpy_and_the_models_own_attention():
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(2, 5, 12)) for _ in range(3))
    heads, hd = 3, 4

    def np_rel(a, b):
        a, b = a.reshape(2, 5, heads, hd), b.reshape(2, 5, heads, hd)
        return _log_softmax(np.einsum("bqhd,bkhd->bhqk", a, b) / np.sqrt(hd))
    log_qk, log_vv = losses.log_relations(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), heads)
    _close(log_qk, np_rel(q, k), 1e-5)
    _close(log_vv, np_rel(v, v), 1e-5)
    t, s = np_rel(q, k), np_rel(v, v)
    want = (np.exp(t) * (t - s)).sum(-1).mean(axis=(1, 2))   # KL(t || s): keys summed, heads/queries averaged
    _close(losses.relation_kl(jnp.asarray(t), jnp.asarray(s)), want, 1e-5)
    _close(losses.relation_kl(jnp.asarray(t), jnp.asarray(t)), np.zeros(2), 1e-6)
    # block_qkv reads the block's own projections: with the model's head count, R_qk is its attention
    for fused in (False, True):
        model = ViT(**{**TINY, "fused_qkv": fused})
        x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
        variables = model.init(jax.random.key(0), x)
        q, k, v = block_qkv(model, variables, x, 1)
        _, state = model.apply(variables, x, mutable=["intermediates"])
        attn = state["intermediates"]["blocks_1"]["attn"]["attn_weights"][0]
        _close(jnp.exp(losses.log_relations(q, k, v, model.num_heads)[0]), attn, 1e-5)


# ------------------------------------------------------------------------------ the teacher

def test_classifier_teacher_sees_the_students_images_in_its_own_statistics():
    net = models.create("resnet20_cifar", depths=(1,), widths=(4,), stem_width=4, num_classes=3,
                        image_size=8)
    variables = jax.tree.map(np.asarray, net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    variables["batch_stats"] = jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])
    t = teachers.Classifier("test", net, variables, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    grey = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    got = t.logits(variables, jnp.asarray(grey), (0.1,), (0.7,))
    pixels = np.repeat(grey * 0.7 + 0.1, 3, -1)
    want, _ = net.apply(variables, (pixels - np.array(t.mean)) / np.array(t.std))   # running stats
    _close(got, want, 1e-5)
    # a smaller image is resized to the teacher's size
    assert t.logits(variables, jnp.zeros((2, 4, 4, 3)), (0.0,) * 3, (1.0,) * 3).shape == (2, 3)
    with pytest.raises(teachers.TeacherError, match="3 classes but the data has 10"):
        t.check_student(10, 3)


# ------------------------------------------------------------------------------ configs and the loop

@pytest.fixture(scope="module")
def resnet_teacher(tmp_path_factory) -> str:
    """A tiny supervised ResNet run on digits (BatchNorm statistics in its variables)."""
    workdir = str(tmp_path_factory.mktemp("resnet_teacher"))
    c = get_config()
    c.model_name = "resnet20_cifar"
    c.model = dict(depths=(1, 1), widths=(8, 16), stem_width=8)
    c.total_steps, c.checkpoint_every, c.eval_every = 6, 6, 0
    c.data.eval_split = ""
    train.run(c, workdir)
    return workdir


def distill_config(teacher: str, **section):
    c = get_config()
    c.objective = "distill"
    c.distill = objectives.default_config("distill")
    c.distill.update(dict(teacher=teacher, **section))
    c.model.dist_token = True
    return c


@pytest.fixture(scope="module")
def hf_classifiers(tmp_path_factory) -> dict[str, str]:
    """Hugging Face folders: a 5-class ViT classifier and a headless ViTModel."""
    out = {}
    for name, classes in (("five", 5), ("headless", 0)):
        m = ViT(num_classes=classes, patch_size=2, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8)
        folder = tmp_path_factory.mktemp(name) / name
        convert.save_hf(m, m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))), folder)
        out[name] = "hf:" + str(folder)
    return out


def test_bad_configs_fail_before_compiling(hf_classifiers, resnet_teacher):
    spec = "workdir:" + resnet_teacher
    with pytest.raises(ConfigError, match="has 5 classes but the data has 10"):
        validate(distill_config(hf_classifiers["five"]))
    with pytest.raises(ConfigError, match="without a classification head"):
        validate(distill_config(hf_classifiers["headless"]))
    c = distill_config(spec)
    c.model.dist_token = False
    with pytest.raises(ConfigError, match="no distillation token.*model.dist_token=True"):
        validate(c)
    with pytest.raises(ConfigError, match="distill.type='soften'"):
        validate(distill_config(spec, type="soften"))
    with pytest.raises(ConfigError, match="distill.target='features'"):
        validate(distill_config(spec, target="features"))
    with pytest.raises(ConfigError, match="distill.teacher is not set"):
        validate(distill_config(""))
    with pytest.raises(ConfigError, match="trains the class head alone"):
        validate(distill_config(spec, type="none"))
    with pytest.raises(ConfigError, match="distill.alpha"):
        validate(distill_config(spec, alpha=1.5))
    with pytest.raises(ConfigError, match="unknown classifier teacher"):
        validate(distill_config("dinov2_vits14"))
    # the soft variant and the no-teacher baseline validate (init and loss traced, nothing compiled)
    assert validate(distill_config(spec, type="soft", tau=3.0)).objective.teacher.num_classes == 10
    c = distill_config("", type="none")
    c.model.dist_token = False
    assert validate(c).objective.teacher is None


def test_hard_distillation_through_the_loop(resnet_teacher, tmp_path):
    c = distill_config("workdir:" + resnet_teacher)
    c.total_steps, c.eval_every, c.checkpoint_every = 10, 10, 10
    out = train.run(c, str(tmp_path / "run"))
    assert out["step"] == 10
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    term = [r["train/loss_distill"] for r in rows if "train/loss_distill" in r]
    assert term[-1] < term[0] - 0.1, term      # the distillation head learns the teacher's labels
    final = [r for r in rows if "eval/test/accuracy_dist" in r][-1]
    for key in ("accuracy", "accuracy_cls", "accuracy_dist", "accuracy_teacher", "top5", "loss"):
        assert 0.0 <= final[f"eval/test/{key}"] <= max(1.0, final["eval/test/loss"])
    # the frozen teacher (params and BatchNorm statistics) is checkpointed unchanged
    extra = checkpoint.load_params(str(tmp_path / "run"), path=("extra",))
    src = teachers.load_classifier("workdir:" + resnet_teacher)
    assert set(extra["teacher"]) == {"params", "batch_stats"}
    for a, b in zip(jax.tree.leaves(extra["teacher"]), jax.tree.leaves(src.variables)):
        np.testing.assert_array_equal(a, b)
    params = checkpoint.load_params(str(tmp_path / "run"))
    assert {"dist_token", "head_dist", "head"} <= set(params)
    # the finished run as objects: its network predicts with the heads' average
    run = load_run(str(tmp_path / "run"))
    probs = run.predict([run.source()[i] for i in range(3)])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------ TinyMIM relations

def relations_config(teacher: str, **section):
    c = distill_config(teacher, target="relations", **section)
    c.model = dict(width=16, depth=2, num_heads=1, mlp_dim=32)   # 1 head: split into the teacher's 2
    return c


def test_relation_configs_fail_clearly(hf_classifiers, resnet_teacher):
    spec = hf_classifiers["headless"]   # a ViT teacher: 1 block, 2 heads, patch 2
    with pytest.raises(ConfigError, match="teacher_layer=2: the teacher has blocks 1..1"):
        validate(relations_config(spec, teacher_layer=2))
    c = relations_config(spec)
    c.model.update(width=15, num_heads=1, mlp_dim=30)
    with pytest.raises(ConfigError, match="width 15 does not split into the teacher's 2 heads"):
        validate(c)
    with pytest.raises(ConfigError, match="only ViT-family teachers"):
        validate(relations_config("workdir:" + resnet_teacher))
    c = relations_config(spec)
    c.model.num_classes = 10
    with pytest.raises(ConfigError, match="no classification head"):
        validate(c)
    obj = validate(relations_config(spec, teacher_layer=-1)).objective
    assert (obj.teacher_index, obj.heads, obj.backbone.num_classes) == (0, 2, 0)


def test_relation_distillation_through_the_loop(hf_classifiers, tmp_path):
    c = relations_config(hf_classifiers["headless"])
    c.total_steps, c.eval_every, c.checkpoint_every = 12, 12, 12
    c.optim.lr = 1e-2
    train.run(c, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    loss = [r["train/loss"] for r in rows if "train/loss" in r]
    assert loss[-1] < loss[0] - 0.01, loss
    final = [r for r in rows if "eval/test/loss_qk" in r][-1]
    assert final["eval/test/loss"] == pytest.approx(final["eval/test/loss_qk"] + final["eval/test/loss_vv"],
                                                    rel=1e-4)
    params = checkpoint.load_params(str(tmp_path / "run"))
    assert "head" not in params and "blocks_1" in params
