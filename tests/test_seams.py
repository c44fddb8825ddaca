"""The joints of the house: a new method is one file + one registry line + a config; the import
arrows point down (no function-level imports of our modules, no cycles, objectives/ and evaluate/
apart); the Objective interface stays small; durations resolve in one place; old workdirs load."""
from __future__ import annotations

import ast
import glob
import json
import os
import re

import flax.linen as nn
import jax
import ml_collections as mlc
import pytest

from tests.tiny_config import get_config
from vit_jax import durations, metrics, models, objectives, runs, train, validate
from vit_jax.objectives import Objective, backbone_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "vit_jax")
ENTRY_POINTS = {"vit_jax.main"}   # imports train only after jax.distributed.initialize


# --------------------------------------------------------------------------- a method from tests/

class MeanPixel(Objective):
    """A method written outside the package: regress each image's mean pixel from the backbone's
    pooled features (a head of its own), MSE."""
    defaults = dict(scale=1.0)
    backbone_key = ("backbone",)

    def __init__(self, config, info):
        super().__init__(config, info)
        if self.cfg.scale <= 0:
            raise ValueError(f"mean_pixel.scale={self.cfg.scale} must be > 0")
        self.backbone = models.create(config.model_name, **backbone_kwargs(config, info, num_classes=0))
        self.head = nn.Dense(1)

    def init(self, rng, batch):
        r1, r2 = jax.random.split(rng)
        bb = self.backbone.init(r1, batch["image"], train=False)["params"]
        feats, _ = self.backbone.apply({"params": bb}, batch["image"])
        return {"backbone": bb, "head": self.head.init(r2, feats)["params"]}, {}

    def _errors(self, params, images):
        feats, _ = self.backbone.apply({"params": params["backbone"]}, images)
        pred = self.head.apply({"params": params["head"]}, feats)[:, 0]
        return (pred - self.cfg.scale * images.mean(axis=(1, 2, 3))) ** 2

    def loss(self, params, extra, batch, rng, step):
        loss = self._errors(params, batch["image"]).mean()
        return loss, ({"loss": loss}, extra)

    def eval_metrics(self, params, extra, batch):
        return {"mse": self._errors(params, batch["image"])}


@pytest.fixture
def mean_pixel(monkeypatch):
    monkeypatch.setitem(objectives.REGISTRY, "mean_pixel", "tests.test_seams:MeanPixel")
    cfg = get_config()
    cfg.objective = "mean_pixel"
    cfg.mean_pixel = objectives.default_config("mean_pixel")
    cfg.evals = mlc.ConfigDict({"test": dict(type="metrics"), "knn": dict(type="knn", ks=(5,), every_steps=12)})
    cfg.total_steps, cfg.eval_every = 24, 6
    return cfg


def test_a_method_from_tests_trains_through_the_loop_with_config_evaluators(mean_pixel, tmp_path):
    out = train.run(mean_pixel, str(tmp_path))
    rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    mse = [(r["step"], r["eval/test/mse"]) for r in rows if "eval/test/mse" in r]
    knn = [r["step"] for r in rows if "eval/knn/top1_k5" in r]
    assert [s for s, _ in mse] == [6, 12, 18, 24] and knn == [12, 24]   # each evaluator its own clock
    assert mse[-1][1] < mse[0][1], mse
    assert 0.0 < out["eval/knn/top1_k5"] <= 1.0
    # its backbone serves downstream like any method's: a k-NN run reads it through init_from
    cfg = get_config()
    cfg.objective, cfg.total_steps, cfg.init_from = "knn", 0, str(tmp_path)
    cfg.evals = mlc.ConfigDict({"knn": dict(type="knn", ks=(5,))})
    assert train.run(cfg, str(tmp_path / "knn"))["eval/knn/top1_k5"] == pytest.approx(out["eval/knn/top1_k5"])


def test_method_config_section_and_evaluator_errors(mean_pixel):
    cfg = mean_pixel.copy_and_resolve_references()
    cfg.mean_pixel.scale = -1.0
    with pytest.raises(validate.ConfigError, match="mean_pixel.scale=-1.0"):
        validate.validate(cfg)
    cfg = mean_pixel.copy_and_resolve_references()
    cfg.mean_pixel.scael = 1.0
    with pytest.raises(validate.ConfigError, match=r"unknown key\(s\) \['scael'\] in config.mean_pixel"):
        validate.validate(cfg)
    for evals, message in [({"x": dict(type="bleu")}, "evals.x.type='bleu' is unknown"),
                           ({"x": dict(ks=(1,))}, "evals.x needs a type"),
                           ({"x": dict(type="knn", k=5)}, r"unknown key\(s\) \['k'\] in evals.x"),
                           ({"x": dict(type="reconstruction")}, "objective.reconstruction_image"),
                           ({"x": dict(type="knn", every_steps=-2)}, "evals.x.every_steps=-2.0 must be >= 0")]:
        cfg = mean_pixel.copy_and_resolve_references()
        cfg.evals = mlc.ConfigDict(evals)
        with pytest.raises(validate.ConfigError, match=message):
            validate.validate(cfg)


# --------------------------------------------------------------------------- durations

def test_durations_in_steps_epochs_examples():
    sec = {"eval_every": None, "eval_every_epochs": 2.0, "eval_every_examples": None}
    assert durations.resolve(sec, "eval_every", num_train=1000, batch_size=100) == 20
    sec["eval_every_examples"] = 550
    notes = []
    assert durations.resolve(sec, "eval_every", 1000, 100, note=notes.append) == 6   # round(5.5): 6
    assert "eval_every_examples=550 is used; eval_every_epochs=2.0 ignored" in notes[0]
    sec["eval_every"] = 7
    assert durations.resolve(sec, "eval_every", 1000, 100, note=notes.append) == 7   # steps win
    assert durations.resolve({}, "eval_every", 1000, 100, default=500) == 500
    c = get_config()
    c.total_steps = -1
    c.num_epochs = 2.0
    assert durations.total_steps(c, 1397) == round(2 * 1397 / 16)
    c.num_epochs, c.total_examples = None, 160
    assert durations.total_steps(c, 1397) == 10
    c.total_examples = None
    assert durations.total_steps(c, 1397) == round(durations.DEFAULT_EPOCHS * 1397 / 16)
    with pytest.raises(ValueError, match="optim.warmup_epochs=-1.0 must be >= 0"):
        durations.resolve({"warmup_epochs": -1.0}, "warmup", 1000, 100, where="optim")


def test_warmup_in_epochs_drives_the_schedule():
    c = get_config()
    c.optim.warmup_steps, c.optim.warmup_epochs = None, 0.0573   # 0.0573 * 1397 / 16 = 5.0 steps
    plan = validate.validate(c)
    assert plan.steps["warmup"] == 5 and plan.steps["total"] == 12
    c.eval_every, c.eval_every_epochs = None, 0.0573 * 2
    assert validate.validate(c).evaluators[0].every == 10


def test_no_config_computes_a_step_count():
    # durations are given in one unit; nothing multiplies images per epoch by hand
    for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True):
        text = open(path).read()
        assert "IMAGES_PER_EPOCH" not in text and "// c.batch_size" not in text, path
        assert not re.search(r"c\.(eval_every|checkpoint_every) = \d", text), path


# --------------------------------------------------------------------------- old workdirs

OLD = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "old_configs", "*.json")))


@pytest.mark.parametrize("path", OLD, ids=[os.path.basename(p)[:-5] for p in OLD])
def test_old_config_json_upgrades_and_validates(path, tmp_path):
    """config.json files written by the code before the seams changed (tests/data/old_configs,
    one per shipped mnist5k config) read as today's configs and validate."""
    old = json.load(open(path))
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(old))
    config = runs.load_config(str(workdir))
    if "swin" in config.model_name:
        assert "embed_dim" not in config.model and config.model.width == old["model"]["embed_dim"]
    if config.objective == "knn":
        assert list(config.evals.knn.ks) == old["knn"]["ks"] and "knn" not in config
    if config.objective == "esvit":
        assert "knn_k" not in config.esvit and config.evals.knn.type == "knn"
    validate.validate(config)


def test_old_workdir_loads_for_init_from_and_load_run(tmp_path):
    """A run whose config.json predates the change (configs/mnist5k/finetune.py's, with steps and
    the `supervised` section in it) still loads as a run and as init_from."""
    old = json.load(open(os.path.join(ROOT, "tests", "data", "old_configs", "finetune.json")))
    cfg = get_config()   # the old file's keys, but the tiny model and data (a few seconds)
    cfg.model.update(pool=old["model"]["pool"], head_init_std=old["model"]["head_init_std"])
    cfg.total_steps = 2
    workdir = str(tmp_path / "old")
    train.run(cfg, workdir)
    old.update(model_name=cfg.model_name, model=cfg.model.to_dict(), data=cfg.data.to_dict())
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(old, f)
    run = runs.load_run(workdir)
    assert run.config.eval_every == old["eval_every"] and run.config.supervised.label_smoothing == 0.1
    probe = get_config()
    probe.model_name, probe.model = cfg.model_name, cfg.model
    probe.objective, probe.init_from, probe.total_steps = "knn", workdir, 0
    probe.evals = mlc.ConfigDict({"knn": dict(type="knn", ks=(5,))})
    assert 0.0 < train.run(probe, str(tmp_path / "knn"))["eval/knn/top1_k5"] <= 1.0


def test_renamed_model_fields_fail_with_the_new_name():
    with pytest.raises(ValueError, match="'embed_dim' is now 'width'"):
        models.create("swin_tiny_patch4_window7_224", embed_dim=48)
    assert models.upgrade_fields({"embed_dim": 48, "depths": (2, 2)})[0] == {"width": 48, "depths": (2, 2)}


# --------------------------------------------------------------------------- the layering

def _modules() -> dict[str, str]:
    out = {}
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(path: str, modules: dict[str, str]) -> tuple[set[str], list[str]]:
    """(our modules imported at module level, 'line: name' of our imports inside functions)."""
    tree = ast.parse(open(path).read())
    top, inner = set(), []

    def targets(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names]
        return []

    for node in tree.body:
        for name in targets(node):
            if name.startswith("vit_jax"):
                top.add(name)
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                inner += [f"{node.lineno}: {n}" for n in targets(node) if n.startswith("vit_jax")]
    return top, inner


def test_import_arrows_point_down():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        top, inner = _imports(path, modules)
        if name not in ENTRY_POINTS:
            assert not inner, f"{name} imports our modules inside functions: {inner}"
        graph[name] = {t for t in top if t in modules and t != name}
        if name.startswith("vit_jax.objectives"):
            assert not any(t.startswith(("vit_jax.evaluate", "vit_jax.train")) for t in top), name
        if name.startswith("vit_jax.evaluate"):
            assert not any(t.startswith("vit_jax.objectives") for t in top), name
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if not state.get(m):
                visit(m, stack + [m])
        state[n] = 2
    for n in graph:
        if not state.get(n):
            visit(n, [n])


def test_no_file_over_400_lines_and_a_small_objective_interface():
    for path in _modules().values():
        assert sum(1 for _ in open(path)) <= 400, path
    public = [n for n, v in vars(Objective).items() if callable(v) and not n.startswith("_")]
    assert len(public) <= 6, public
    text = open(os.path.join(PACKAGE, "train.py")).read()
    names = "|".join(objectives.names())
    assert not re.search(rf"\b({names}|dino)\b", text, re.I), "train.py names a method"
