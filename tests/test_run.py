"""A finished run as objects (vit_jax/runs.py), config files by path, and the prediction figure:
the pieces the notebooks in colabs/ stand on."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from tests.tiny_config import get_config as tiny_config
from vit_jax import train, viz
from vit_jax.config_base import load_config_file
from vit_jax import objectives
from vit_jax.runs import Run, load_run
from vit_jax.validate import validate

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny") / "run")
    train.run(tiny_config(), workdir)
    return load_run(workdir)


def test_run_source_and_predict(tiny_run):
    source = tiny_run.source()
    assert len(source) == 400                               # digits' test split (the eval split)
    assert len(tiny_run.source("train")) == 1397
    examples = [source[i] for i in range(5)]
    probs = tiny_run.predict(examples)
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits, _ = tiny_run.model.apply(tiny_run.variables, tiny_run.images(examples))
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)
    # a supervised run's backbone is its whole network
    assert tiny_run.backbone_variables["params"] is tiny_run.params


def test_backbone_variables_prefer_the_ema_teacher(tiny_run):
    from tests.test_esvit import esvit_config
    from tests.test_mae import INFO, tiny_config as mae_config
    student = {"backbone": {"w": np.zeros(2)}, "head": {"w": np.ones(2)}}
    teacher = {"backbone": {"w": np.full(2, 7.0)}, "head": {"w": np.ones(2)}}
    esvit = validate(esvit_config()).objective
    run = Run("x", tiny_run.config, esvit, student, {"ema_teacher": {"params": teacher, "stats": {}}}, None)
    assert run.backbone_variables["params"]["w"][0] == 7.0
    mae = objectives.build(mae_config(), INFO)
    run = Run("x", tiny_run.config, mae, {"encoder": {"w": np.zeros(2)}, "decoder": {"w": np.ones(2)}}, {}, None)
    assert run.backbone_variables["params"]["w"][0] == 0.0


def test_predict_refuses_a_pretraining_run(tiny_run):
    config = tiny_run.config.copy_and_resolve_references()
    config.objective = "mae"
    run = Run("some/mae", config, tiny_run.objective, tiny_run.params, {}, tiny_run.eval_transform)
    with pytest.raises(ValueError, match="'mae' run; predict needs a supervised one"):
        run.predict([tiny_run.source()[0]])


def test_load_config_file_with_an_argument_that_is_a_path(tmp_path):
    workdir = str(tmp_path / "runs" / "mae")           # has "/" in it and does not exist (yet)
    config = load_config_file(os.path.join(CONFIGS, "mnist5k", "finetune.py") + ":" + workdir)
    assert config.init_from == workdir
    assert load_config_file(os.path.join(CONFIGS, "mnist5k", "finetune.py"), workdir).init_from == workdir
    with pytest.raises(FileNotFoundError, match="nope.py does not exist"):
        load_config_file(str(tmp_path / "nope.py") + ":" + workdir)


def test_predictions_figure():
    images = [np.zeros((8, 8, 1), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    fig = viz.predictions_figure(images, probs, [0, 0, 0], ["cat", "dog"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["cat\n90%", "dog\n80%", "cat\n60%"]
    colours = [ax.title.get_color() for ax in fig.axes]
    assert colours == ["green", "red", "green"]
    with pytest.raises(ValueError, match="one of each per example"):
        viz.predictions_figure(images[:2], probs, [0, 0, 0])
