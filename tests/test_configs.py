"""Every shipped config loads and passes validation (ImageNet ones on tfds mock data)."""
import glob
import importlib.util
import os

import pytest
import tensorflow_datasets as tfds
import torch
import transformers

import jax
import jax.numpy as jnp

from vit_jax import convert, durations, models, objectives, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("quickstart.py", ""), ("mnist5k/mae_pretrain.py", ""), ("mnist5k/finetune.py", ""),
         ("mnist5k/linear_probe.py", ""), ("mnist5k/knn.py", ""), ("mnist5k/knn.py", ",gap"),
         ("mnist5k/linear_probe.py", ",gap"),
         ("imagenet/mae_pretrain.py", "base"), ("imagenet/mae_pretrain.py", "huge"),
         ("imagenet/mae_finetune.py", "large,"), ("imagenet/mae_linear_probe.py", "base,"),
         ("mnist5k/swin.py", ""), ("mnist5k/cvt.py", ""), ("mnist5k/resnet.py", ""), ("mnist5k/resnet.py", "seed=2,aug=shift"),
         ("mnist5k/cct.py", ""), ("mnist5k/cct.py", "vit_lite,seed=1"), ("mnist5k/cct.py", "vit_lite_seqpool"),
         ("mnist5k/cct.py", "vit,aug=shift"), ("imagenet/swin.py", "tiny"),
         ("imagenet/swin.py", "base"), ("imagenet/cvt.py", "13"), ("imagenet/cvt.py", "21"),
         ("mnist5k/eva_pretrain.py", "dinov2"), ("imagenet/eva_pretrain.py", ""),
         ("mnist5k/esvit.py", "vr,vit"), ("mnist5k/esvit.py", "v,swin"),
         ("mnist5k/esvit.py", "v,vit,faithful"), ("imagenet/esvit.py", "tiny"),
         ("mnist5k/deit.py", ""), ("mnist5k/deit.py", "none"), ("mnist5k/tinymim.py", ""),
         ("cifar/cct.py", ""), ("cifar/cct.py", "5000,model=vit_lite_7_4_32"), ("cifar/resnet.py", ""),
         ("cifar/resnet.py", "20,seed=1")]


def load(path, arg):
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_mnist5k_eva_teacher_knows_digits_by_default():
    assert load("mnist5k/eva_pretrain.py", "").eva.teacher == "workdir:workdirs/quickstart"
    assert load("mnist5k/eva_pretrain.py", "runs/sup").eva.teacher == "workdir:runs/sup"


def test_mnist5k_deit_is_taught_by_the_resnet_anchor_by_default():
    c = load("mnist5k/deit.py", "")
    assert (c.distill.teacher, c.distill.type, c.model.dist_token) == ("workdir:workdirs/mnist5k_resnet",
                                                                       "hard", True)
    c = load("mnist5k/deit.py", "runs/cct,soft")
    assert (c.distill.teacher, c.distill.type) == ("workdir:runs/cct", "soft")
    c = load("mnist5k/deit.py", "seed=3,soft,hf:teacher")
    assert (c.seed, c.distill.type, c.distill.teacher) == (3, "soft", "hf:teacher")
    with pytest.raises(ValueError, match="seed='x'"):
        load("mnist5k/deit.py", "seed=x")
    c = load("mnist5k/deit.py", "none")   # the baseline: the same ViT, no token, no teacher
    assert (c.distill.teacher, c.distill.type, c.model.dist_token) == ("", "none", False)
    c = load("mnist5k/tinymim.py", "")
    assert (c.distill.teacher, c.distill.target) == ("workdir:workdirs/mnist5k_mae", "relations")


def test_config_args_parse_and_bad_ones_name_the_options():
    c = load("mnist5k/cct.py", "vit,seed=2")
    assert (c.model_name, c.seed, c.model.width) == ("vit_tiny_patch4_28", 2, 128)
    assert c.data.train_transform.startswith("random_affine(15,")   # the shipped wider warps
    assert load("mnist5k/cct.py", "aug=affine").data.train_transform.startswith("random_affine(10,")
    assert load("mnist5k/resnet.py", "aug=shift").data.train_transform.startswith("pad_crop(")
    for arg, word in [("seed=x", "seed='x'"), ("resnet", "'resnet' is not an option"),
                      ("aug=rotate", "aug='rotate'"), ("lr=3", "'lr=3' is not an option")]:
        with pytest.raises(ValueError, match=word) as e:
            load("mnist5k/cct.py", arg)
        assert "model=cct|cct_3x2|vit_lite|vit_lite_seqpool|vit,seed=N,aug=shift|affine|affine15" in str(e.value)


def test_cifar_recipes_are_the_papers():
    """CCT's 300-epoch yml and He et al.'s ResNet-56: the numbers a reader checks first."""
    c = load("cifar/cct.py", "")
    assert (c.model_name, c.num_epochs, c.optim.lr, c.optim.weight_decay, c.batch_size) == (
        "cct_7_3x1_32", 310.0, 5.5e-4, 0.06, 128)
    assert (c.optim.warmup_epochs, c.optim.cooldown_epochs, c.optim.start_lr, c.optim.end_lr) == (10, 10, 1e-5, 1e-5)
    assert (c.supervised.mixup_alpha, c.supervised.cutmix_alpha, c.supervised.mixup_off_epochs,
            c.supervised.label_smoothing) == (0.8, 1.0, 175.0, 0.1)
    assert "increasing=True" in c.data.train_transform and "random_erasing" not in c.data.train_transform
    c = load("cifar/cct.py", "5000")
    assert (c.model_name, c.optim.lr, c.supervised.mixup_off_epochs) == ("cct_7_3x1_32_sine", 5e-4, None)
    assert c.data.train_transform.endswith("|random_erasing(0.25)")
    c = load("cifar/resnet.py", "")
    assert (c.model_name, c.optim.name, c.optim.schedule, tuple(c.optim.step_boundaries), c.num_epochs) == (
        "resnet56_cifar", "sgd", "step", (0.5, 0.75), 164.0)
    with pytest.raises(ValueError, match="depth='32'"):
        load("cifar/resnet.py", "depth=32")
    with pytest.raises(ValueError, match="'cct_7_3x2_32' is not an option"):
        load("cifar/cct.py", "cct_7_3x2_32")


def test_frozen_protocols_read_the_mean_patch_token_on_request():
    for path in ("mnist5k/knn.py", "mnist5k/linear_probe.py"):
        assert (load(path, ",gap").model.pool, load(path, ",gap").model.fc_norm) == ("gap", False)
        assert "pool" not in load(path, "").model
        with pytest.raises(ValueError, match="WORKDIR,gap"):
            load(path, ",mean")


def test_imagenet_configs_feed_an_accelerator_from_worker_processes_in_uint8():
    """The accelerator configs: grain worker processes, and uint8 to the devices (the wire, or
    for EsViT its crops with the photometric chain in the step)."""
    for path, arg in CASES:
        if path.startswith("imagenet/"):
            cfg = load(path, arg)
            assert cfg.data.loader == "grain" and cfg.data.workers == 32, path
            uint8 = cfg.data.wire == "uint8" or cfg.get("esvit", {}).get("photometric_on_device")
            assert uint8 or cfg.objective == "eva", path   # EVA's host step needs the float image


def test_every_config_file_is_covered():
    shipped = {os.path.relpath(p, os.path.join(ROOT, "configs"))
               for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)}
    assert shipped == {p for p, _ in CASES}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random CLIP-like /14 vision tower standing in for CLIP-L/14 (not available offline)."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=28, patch_size=14,
                                        projection_dim=16)
    folder = tmp_path_factory.mktemp("clip") / "clip"
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_digit_classifier(tmp_path_factory) -> str:
    """A random 10-class, 1-channel ViT classifier (a Hugging Face folder) standing in for the
    trained mnist5k teacher runs (DeiT's ResNet, TinyMIM's MAE), which CI does not have."""
    m = models.create("vit_tiny_patch14_28", num_classes=10, in_channels=1, width=16, depth=1, num_heads=2)
    folder = tmp_path_factory.mktemp("digits") / "vit"
    convert.save_hf(m, m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))), folder)
    return str(folder)


@pytest.mark.parametrize("path,arg", CASES, ids=[f"{p}:{a}" for p, a in CASES])
def test_config_validates(path, arg, tiny_clip, tiny_digit_classifier):
    cfg = load(path, arg)
    if path == "imagenet/eva_pretrain.py":
        cfg.eva.teacher = "hf:" + tiny_clip
    if path in ("mnist5k/deit.py", "mnist5k/tinymim.py") and cfg.distill.teacher:
        cfg.distill.teacher = "hf:" + tiny_digit_classifier
    # the mock has 8 images: give the real schedule length
    if path.startswith("imagenet/"):
        cfg.total_steps = durations.total_steps(cfg, 1_281_167)
    if path.startswith("cifar/"):
        cfg.total_steps = durations.total_steps(cfg, 50_000)
    with tfds.testing.mock_data(num_examples=8):
        plan = validate.validate(cfg)
    assert plan.total_steps >= 0 and isinstance(plan.objective, objectives.get_class(cfg.objective))
    # each config file documents the command that runs it
    with open(os.path.join(ROOT, "configs", path)) as f:
        assert "python -m vit_jax.main --config configs/" + path in f.read()
