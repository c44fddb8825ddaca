"""Per-example host transforms (numpy + PIL), deterministic given a ``np.random.Generator``.

Images are np.uint8 (H, W, C) with C in {1, 3} until :func:`normalize`, which returns float32.
Randomness only ever comes from the ``rng`` argument, so a pipeline that derives one Generator per
(seed, epoch, index) is exactly reproducible and resumable.

A pipeline is written as a big_vision-style spec string, ops separated by "|":
    "random_resized_crop(scale=(0.5, 1))|flip|randaug(2, 9)|normalize"
Arguments are Python literals read with ``ast.literal_eval`` (never ``eval``). Ops that take a size
use ``image_size`` from :func:`build` when the spec omits it. Valid names: ``OPS`` and ``ALIASES``.
"""
from __future__ import annotations

import ast
import inspect
import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

# The PIL round trip, decoding, normalisation, RandAugment, random affine / elastic / erasing live
# in their own modules (which do not import this one).
from vit_jax.data.image_decode import EncodedImage
from vit_jax.data.normalization import (  # noqa: F401  (the presets: re-exported)
    CIFAR10_MEAN, CIFAR10_STD, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN,
    INCEPTION_STD, MNIST_MEAN, MNIST_STD, STATS, get_stats, normalize)
from vit_jax.data.pil_image import check_image as _check, from_pil, to_pil
from vit_jax.data.random_affine import random_affine
from vit_jax.data.random_elastic import random_elastic
from vit_jax.data.random_erasing import MODES as ERASE_MODES, random_erasing
from vit_jax.data.randaugment import RAND_AUGMENT_INCREASING_OPS, RAND_AUGMENT_OPS, rand_augment_pil
from vit_jax.errors import DataError

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _resize_box(img: np.ndarray, hw: tuple[int, int], box: tuple[float, float, float, float] | None
                = None, resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize (the (left, top, right, bottom) box of) img to hw; PIL antialiases when shrinking."""
    return from_pil(to_pil(img).resize((hw[1], hw[0]), resample=resample, box=box))


def random_resized_crop_box(h: int, w: int, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3), *,
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box for an h x w image -> (top, left, height, width).

    Up to 10 draws of area ~ U(scale) * h*w and log-aspect ~ U(log ratio); the first box that fits
    is used. Otherwise fall back to a center crop of the whole image clamped to the ratio range.
    """
    area, log_r = h * w, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    if w / h < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif w / h > max(ratio):
        cw, ch = round(h * max(ratio)), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _image_hw(img: np.ndarray | EncodedImage) -> tuple[int, int]:
    return img.hw if isinstance(img, EncodedImage) else _check(img).shape[:2]


def _resize_any(img: np.ndarray | EncodedImage, hw: tuple[int, int],
                box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """_resize_box, or for a file not decoded yet its decode at the JPEG scale hw needs."""
    return img.decode_resized(hw, box) if isinstance(img, EncodedImage) else _resize_box(img, hw, box)


def random_resized_crop(img: np.ndarray | EncodedImage, size: Size, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), *, rng: np.random.Generator
                        ) -> np.ndarray:
    """Inception crop (see random_resized_crop_box), resized bilinearly: (H, W, C) -> (h, w, C)."""
    top, left, ch, cw = random_resized_crop_box(*_image_hw(img), scale, ratio, rng=rng)
    return _resize_any(img, _hw(size), (left, top, left + cw, top + ch))


def random_flip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Horizontal flip with probability p. (H, W, C) -> (H, W, C)."""
    return img[:, ::-1] if rng.random() < p else img


def resize(img: np.ndarray | EncodedImage, size: Size) -> np.ndarray:
    """int: shorter side -> size, aspect kept (torchvision rule); (h, w): exact size."""
    h, w = _image_hw(img)
    if not np.isscalar(size):
        return _resize_any(img, _hw(size))
    size = int(size)
    hw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if hw == (h, w):
        return np.asarray(img)
    return _resize_any(img, hw)


def center_crop(img: np.ndarray, size: Size) -> np.ndarray:
    """Central (h, w) crop; an image smaller than the crop is first zero-padded around."""
    ch, cw = _hw(size)
    h, w = _check(img).shape[:2]
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = img.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img[top:top + ch, left:left + cw]


def resize_center_crop(img: np.ndarray | EncodedImage, size: Size, crop_pct: float = 0.875) -> np.ndarray:
    """Eval transform: shorter side -> floor(size / crop_pct), then center crop size (timm rule)."""
    ch, cw = _hw(size)
    return center_crop(resize(img, int(math.floor(min(ch, cw) / crop_pct))), (ch, cw))


def random_crop_with_padding(img: np.ndarray, size: Size, padding: int, rng: np.random.Generator,
                             fill: int = 0) -> np.ndarray:
    """CIFAR-style: pad each side by ``padding`` with ``fill``, then a uniform random crop."""
    ch, cw = _hw(size)
    padded = np.pad(_check(img), ((padding, padding), (padding, padding), (0, 0)),
                    constant_values=fill)
    h, w = padded.shape[:2]
    if h < ch or w < cw:
        raise ValueError(f"crop {ch}x{cw} larger than the padded image {h}x{w}: resize "
                         "the image first, or crop smaller")
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return padded[top:top + ch, left:left + cw]


def to_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W, 3) by repetition; RGB passes through."""
    return np.repeat(img, 3, axis=-1) if _check(img).shape[-1] == 1 else img


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) with PIL's ITU-R 601-2 luma; gray passes through."""
    return from_pil(to_pil(img).convert("L")) if _check(img).shape[-1] == 3 else img


def rand_augment(img: np.ndarray, num_ops: int = 2, magnitude: float = 9,
                 magnitude_std: float = 0.5, *, rng: np.random.Generator,
                 fill: int | tuple[int, ...] = 128, prob: float = 0.5,
                 ops: Sequence[str] | None = None, increasing: bool = False) -> np.ndarray:
    """timm-style RandAugment "rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}[-inc1]". (H, W, 1|3) uint8.

    ``num_ops`` ops drawn with replacement from ``ops``; each is applied with probability ``prob``
    (0.5 in timm) at magnitude ~ N(magnitude, magnitude_std) (U(0, magnitude) when std is inf),
    clipped to [0, 10]. ``fill`` colours the area that geometric ops uncover. ``increasing``
    ("inc1"): the op set whose posterize, solarize and enhancers grow stronger with the magnitude. The ops and the
    policy live in vit_jax/data/randaugment.py (on PIL images); this is the array op.
    """
    return from_pil(rand_augment_pil(to_pil(img), num_ops, magnitude, magnitude_std, rng=rng,
                                     fill=fill, prob=prob, ops=ops, increasing=increasing))


# ----------------------------------------------------------------------------- spec strings
# Spec op name -> function. A spec's arguments bind to the function's parameters after ``img``,
# skipping ``rng`` (which the pipeline passes); an op is random iff its function takes ``rng``.
OPS: dict[str, Callable[..., np.ndarray]] = {
    f.__name__: f for f in (random_resized_crop, random_flip, resize, center_crop,
                            resize_center_crop, random_crop_with_padding, rand_augment, normalize,
                            to_rgb, to_gray, random_affine, random_elastic, random_erasing)}
AFTER_NORMALIZE = ("random_erasing",)   # ops on the normalised image, after `normalize`
# first ops that take a file not decoded yet (data.decode="draft"): they decode only what they keep
TAKES_ENCODED = (random_resized_crop, resize, resize_center_crop)
ALIASES = {"rrc": "random_resized_crop", "flip": "random_flip",
           "pad_crop": "random_crop_with_padding", "randaug": "rand_augment",
           "erase": "random_erasing", "affine": "random_affine", "elastic": "random_elastic"}


def _num(x: Any, integer: bool = False) -> bool:
    return (isinstance(x, numbers.Integral if integer else numbers.Real) and not isinstance(x, bool)
            and math.isfinite(x))


def _size_ok(v: Any) -> bool:
    return (all(_num(x, True) and x > 0 for x in v) and len(v) == 2
            if isinstance(v, (tuple, list)) else _num(v, True) and v > 0)


# Argument kind: (valid?, what a valid value is).
_ARG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "size": (_size_ok, "must be a positive int or a pair (height, width) of positive ints"),
    "range": (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_num, v))
              and 0 < v[0] <= v[1], "must be a pair (low, high) with 0 < low <= high"),
    "prob": (lambda v: _num(v) and 0 <= v <= 1, "must be a probability in [0, 1]"),
    "fraction": (lambda v: _num(v) and 0 < v <= 1, "must be in (0, 1]"),
    "count": (lambda v: _num(v, True) and v >= 0, "must be an int >= 0"),
    "pixel": (lambda v: _num(v, True) and 0 <= v <= 255, "must be an int in [0, 255]"),
    "magnitude": (lambda v: _num(v) and 0 <= v <= 10, "must be in [0, 10] (RandAugment levels)"),
    "flag": (lambda v: isinstance(v, bool), "must be True or False"),
    "spread": (lambda v: v == float("inf") or _num(v) and v >= 0, "must be >= 0 (inf: uniform)"),
    "std": (lambda v: all(_num(x) and x > 0 for x in v), "must be positive numbers"),
    "erase_mode": (lambda v: v in ERASE_MODES, f"must be one of {ERASE_MODES}"),
    "angle": (lambda v: _num(v) and 0 <= v < 90, "must be in [0, 90) degrees"),
    "nonneg": (lambda v: _num(v) and v >= 0, "must be a number >= 0"),
    "positive": (lambda v: _num(v) and v > 0, "must be a number > 0"),
    "shift": (lambda v: isinstance(v, (tuple, list)) and len(v) == 2
              and all(_num(x) and 0 <= x <= 1 for x in v), "must be a pair of fractions in [0, 1]")}


# Build-time checks of the arguments a spec gives (defaults are valid): a bad value fails naming
# the op and the argument, not later as numpy's "high - low < 0" somewhere in the first batch.
_ARG_KINDS: dict[str, dict[str, str]] = {
    "random_resized_crop": {"size": "size", "scale": "range", "ratio": "range"},
    "random_flip": {"p": "prob"},
    "resize": {"size": "size"},
    "center_crop": {"size": "size"},
    "resize_center_crop": {"size": "size", "crop_pct": "fraction"},
    "random_crop_with_padding": {"size": "size", "padding": "count", "fill": "pixel"},
    "rand_augment": {"num_ops": "count", "magnitude": "magnitude", "magnitude_std": "spread",
                     "prob": "prob", "increasing": "flag"},
    "normalize": {"std": "std"},
    "random_erasing": {"p": "prob", "scale": "range", "ratio": "range", "mode": "erase_mode"},
    "random_affine": {"degrees": "angle", "translate": "shift", "scale": "range", "shear": "angle"},
    "random_elastic": {"alpha": "nonneg", "sigma": "positive", "p": "prob"}}


def _check_args(op: str, name: str, a: dict[str, Any]) -> None:
    for key, kind in _ARG_KINDS.get(name, {}).items():
        valid, need = _ARG_RULES[kind]
        if key in a and not valid(a[key]):
            raise ValueError(f"{op}: {key}={a[key]!r} {need}")


def _spec_signature(fn: Callable[..., Any]) -> inspect.Signature:
    params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
              for p in inspect.signature(fn).parameters.values() if p.name not in ("img", "rng")]
    return inspect.Signature(params)


def _split_top(spec: str) -> list[str]:
    """Split on "|" outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in transform spec {spec!r}")
    return parts + ["".join(cur)]


def parse_op(item: str) -> tuple[str, tuple, dict[str, Any]]:
    """'name(1, a=(2, 3))' -> ('name', (1,), {'a': (2, 3)}); literals only."""
    item = item.strip()
    try:
        node = ast.parse(item, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"cannot parse transform {item!r}: {e.msg}") from None
    if isinstance(node, ast.Name):
        return node.id, (), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"transform {item!r} must look like name or name(literal args)")
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except ValueError:
        raise ValueError(f"transform {item!r}: arguments must be Python literals") from None
    if len(kwargs) != len(node.keywords):
        raise ValueError(f"transform {item!r}: **kwargs are not allowed")
    return node.func.id, args, kwargs


def build(spec: str | Sequence[str], image_size: Size | None = None,
          mean: Sequence[float] | str = "imagenet", std: Sequence[float] | None = None
          ) -> SpecTransform:
    """Spec -> fn(example, rng=None) -> example with "image" float32 (H, W, C), "label" int32.

    rng (a np.random.Generator) is needed only when the spec has a random op (one taking rng).

    ``spec``: "op|op(args)|..." or a list of such items. ``normalize`` comes after every other op;
    only the ops of AFTER_NORMALIZE (random_erasing), which work on the normalised image, follow
    it and need it written out. When absent it is appended with ``mean``/``std``: a preset name
    ("mnist") with std None, or both values.
    Other example keys pass through untouched. Errors surface here, not in the first batch.
    """
    items = [s for part in ([spec] if isinstance(spec, str) else spec) for s in _split_top(part)]
    items = [s for s in (s.strip() for s in items) if s]
    mean, std = get_stats(mean, std)
    fns: list[tuple[Callable[..., np.ndarray], dict[str, Any], bool]] = []
    names = [ALIASES.get(parse_op(i)[0], parse_op(i)[0]) for i in items]
    for k, item in enumerate(items):
        op, args, kwargs = parse_op(item)
        name = ALIASES.get(op, op)
        if name not in OPS:
            valid = ", ".join(sorted([*OPS, *ALIASES]))
            raise ValueError(f"unknown transform {name!r} in {item!r}; valid: {valid}")
        fn, sig = OPS[name], _spec_signature(OPS[name])
        try:
            a = sig.bind_partial(*args, **kwargs).arguments
            if "size" in sig.parameters and "size" not in a:
                if image_size is None:
                    raise ValueError(f"transform {item!r} needs a size: give it or "
                                     "build(image_size=)")
                a["size"] = image_size
            if name == "normalize":
                if any(n not in AFTER_NORMALIZE for n in names[k + 1:]):
                    raise ValueError(f"normalize must be the last transform (only "
                                     f"{', '.join(AFTER_NORMALIZE)} may follow it) in {items}")
                # bare "normalize" takes build()'s statistics; else a preset or mean+std
                a["mean"], a["std"] = (get_stats(a["mean"], a.get("std")) if "mean" in a
                                       else (mean, std))
            elif name in AFTER_NORMALIZE and "normalize" not in names[:k]:
                raise ValueError(f"{item!r} works on the normalised image: put it after "
                                 f"normalize (e.g. \"...|normalize('mnist')|{op}\") in {items}")
            valid_ops = dict.fromkeys(RAND_AUGMENT_OPS + RAND_AUGMENT_INCREASING_OPS)
            if "ops" in a and set(a["ops"]) - set(valid_ops):
                raise ValueError(f"transform {item!r}: RandAugment ops are {', '.join(valid_ops)}")
            sig.bind(**a)  # every required argument present
        except TypeError as e:
            params = ", ".join(sig.parameters)
            raise ValueError(f"transform {item!r}: {e}; parameters are ({params})") from None
        _check_args(op, name, a)
        fns.append((fn, a, "rng" in inspect.signature(fn).parameters, op))
    if not any(fn is normalize for fn, _, _, _ in fns):
        _check_args("normalize", "normalize", {"std": std})
        fns.append((normalize, {"mean": mean, "std": std}, False, "normalize"))
    return SpecTransform(fns)


class SpecTransform:
    """A built spec: fn(example, rng=None) -> example (see `build`). A class rather than a
    closure so that it pickles: worker processes receive the transform that way."""

    def __init__(self, fns: list[tuple[Callable[..., np.ndarray], dict[str, Any], bool, str]],
                 dtype: type = np.float32):
        self.fns, self.dtype = fns, dtype
        self.random_ops = [fn.__name__ for fn, _, needs_rng, _ in fns if needs_rng]

    def before_normalize(self) -> tuple[SpecTransform, tuple[tuple[float, ...], tuple[float, ...]]]:
        """(this transform without its final normalize, giving uint8 images; that normalize's
        (mean, std)): data.wire="uint8" runs the rest on the device. ValueError when ops follow
        normalize (they work on the normalised image, on the host)."""
        fn, a, _, op = self.fns[-1]
        if fn is not normalize:
            raise ValueError(f"{op!r} follows normalize and works on the normalised image on the host")
        return SpecTransform(self.fns[:-1], np.uint8), (tuple(a["mean"]), tuple(a["std"]))

    def __call__(self, example: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        if rng is None and self.random_ops:  # eval pipelines call fn(example): they must be fixed
            raise ValueError(f"transforms {self.random_ops} are random: call fn(example, rng)")
        img = example["image"]
        if not (isinstance(img, EncodedImage) and self.fns and self.fns[0][0] in TAKES_ENCODED):
            img = np.asarray(img)   # decodes an EncodedImage whole
        for fn, a, needs_rng, op in self.fns:
            try:  # name the op: "crop larger than the image" alone does not say which transform
                img = fn(img, **a, rng=rng) if needs_rng else fn(img, **a)
            except DataError:   # an unreadable file (data.decode="draft"): its message names it
                raise
            except ValueError as e:
                raise ValueError(f"{op}: {e}") from e
        if self.dtype == np.uint8 and np.asarray(img).dtype != np.uint8:   # never wrap values around
            raise ValueError(f"the ops before normalize gave {np.asarray(img).dtype} images, not uint8")
        out = dict(example)
        out["image"] = np.ascontiguousarray(img, dtype=self.dtype)
        out["label"] = np.int32(example["label"])
        return out


def normalization_stats(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the normalize op in a transform spec (build's default, ImageNet, if absent):
    what turns the model's inputs back into pixels in [0, 1]."""
    mean, std = get_stats("imagenet")
    for item in _split_top(spec):
        if not item.strip():
            continue
        name, args, kwargs = parse_op(item)
        if name == "normalize":
            a = dict(zip(("mean", "std"), args), **kwargs)
            if "mean" in a:
                mean, std = get_stats(a["mean"], a.get("std"))
    return tuple(mean), tuple(std)
