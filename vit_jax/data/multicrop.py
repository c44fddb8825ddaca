"""DINO / EsViT multi-crop augmentation on the host (numpy + PIL), deterministic given an rng.

One image becomes 2 "global" crops (large, scale (0.4, 1)) and N "local" crops (small, scale
(0.05, 0.4)); the student sees all of them, the teacher only the global ones. Each crop goes
through the DINO chain (the ops are in color_ops.py), in this order:

    random resized crop (bicubic) -> horizontal flip (0.5) [-> rotation / shear -> 3x3 max / min filter:
    shape ops that are not DINO's, off by default]
    -> colour jitter (p 0.8; brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order)
    -> grayscale (p 0.2) -> Gaussian blur (p 1.0 / 0.1 / 0.5 for global 1 / global 2 / locals)
    -> solarize (threshold 128; p 0 / 0.2 / 0)  -> normalize

Pixel semantics follow torchvision's PIL code path, which is what DINO and EsViT ran: brightness,
contrast and saturation are PIL ``ImageEnhance`` blends (computed in float32, then truncated to
uint8), hue is a shift of the 8-bit H channel of PIL's HSV, grayscale is PIL's "L" (ITU-R 601-2
luma), the blur is PIL's ``GaussianBlur`` (its radius is the standard deviation) and the crops
are resized with PIL's antialiased bicubic filter.

Blur sigma. ``MultiCropSpec.blur_sigma`` is in pixels of a 224-px global crop, DINO's setting.
Every crop, global and local, is blurred with sigma * global_size / 224: the reference 224 / 96
recipe is reproduced exactly (DINO blurs its 96-px locals with the same (0.1, 2) pixels), and a
smaller recipe such as 28 / 12 px on digits is that same recipe shrunk, so a 28-px crop is blurred
like a 224 one relative to its content instead of being smeared by a 2-px kernel. (Scaling each
crop by its own size would shrink the locals' blur a second time and depart from DINO at 224.)

With ``MultiCropSpec.on_device`` the chain stops after the shape ops: the crops stay uint8 and
each carries its row of photometric parameters (photometric.py, drawn here in the same order), and
the jitted step finishes them (esvit.photometric_on_device).

Randomness comes only from the ``rng`` argument, in a fixed order per crop (crop box, flip,
jitter coin + order + factors, grayscale coin, blur coin + sigma, solarize coin); a probability
of exactly 0 or 1 draws no coin. So one Generator per example (pipeline.TrainPipeline seeds it by
(seed, stream position)) makes every batch reproducible.

Cost per call of :func:`multi_crop`, one thread, random-pixel images, median (mean) over a few
hundred calls with the default DINO ops:

    28 x 28 x 1 -> 2 x 28 + 6 x 12 crops (digits):   0.56 (0.60) ms   on the dev host *
                                                     1.17 (1.17) ms   on a GPU machine's host
    224 x 224 x 3 -> 2 x 224 + 8 x 96 crops:        16.8 (17.8) ms    on the dev host *
                                                    31.9 (31.2) ms    on a GPU machine's host,
        where torchvision's DINO transform (same ops on PIL) took 24.5 (26.5) ms; 4 threads
        give ~92 images/s there and 8 no more (the GIL).
    * 2 cores shared with a training run (load ~2.7), so these are upper bounds for its cores.

At 224 px the time goes to the hue jitter (PIL's HSV round trip, ~1/3), the Gaussian blur and
the bicubic resizes (~1/5 each); numpy versions of the hue shift were slower.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFilter

from vit_jax.data import transforms
from vit_jax.data import photometric
from vit_jax.data.color_ops import as_uint8, coin, pil_gaussian, pil_grayscale, pil_jitter_with, solarize_lut
from vit_jax.data.random_affine import affine_pil

REFERENCE_SIZE = 224  # blur_sigma is given in pixels of a crop this large (DINO's global crop)


@dataclasses.dataclass(frozen=True)
class MultiCropSpec:
    """What :func:`multi_crop` produces and how each crop is augmented (defaults: DINO's).

    Probabilities given as triples are (global crop 1, global crop 2, local crops).
    ``mean`` is a preset name of ``transforms.STATS`` (``std`` None) or explicit values with
    ``std``; one value broadcasts over the channels. Lists are accepted and stored as tuples.
    The spec validates itself on construction (see :meth:`validate`).
    """
    global_size: int
    local_size: int
    num_local: int
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    flip: bool = True  # False for digits: a mirrored 2 or 7 is not a digit
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels of a 224 crop, see the module docstring
    solarize_p: tuple[float, float, float] = (0.0, 0.2, 0.0)
    # Shape ops, not DINO's (0 = off): a random rotation in [-rotate, rotate] and shear in
    # [-shear, shear] degrees about the crop's centre (fill 0), and with probability morph_p a 3x3
    # max (thicker strokes) or min (thinner) filter, each half the time. For digits, where a
    # crop's slant and stroke width tell instances apart without telling digits apart.
    rotate: float = 0.0
    shear: float = 0.0
    morph_p: float = 0.0
    # the filter's weight, drawn U(lo, hi) per crop and blended with the crop (1 = the whole
    # filter): fractional stroke widths leave no width that a crop can be matched by
    morph_strength: tuple[float, float] = (1.0, 1.0)
    mean: tuple[float, ...] | str = "imagenet"
    std: tuple[float, ...] | None = None
    # True: the crops leave the host as uint8 with their photometric rows (photometric.py), and
    # the jitter, grayscale, blur, solarize and normalisation run on the device
    on_device: bool = False

    def __post_init__(self) -> None:
        # Configs often hold lists (JSON, YAML); tuples keep the frozen spec hashable.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (list, np.ndarray)):
                object.__setattr__(self, f.name, tuple(float(x) for x in v))
        self.validate()

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The resolved (mean, std) in [0, 1] pixel units."""
        return transforms.get_stats(self.mean, self.std)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and how to fix it."""
        for name in ("global_size", "local_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"MultiCropSpec.{name}={v!r}: give the crop side in pixels as an "
                                 "integer >= 1")
        if isinstance(self.num_local, bool) or not isinstance(self.num_local, (int, np.integer)) \
                or self.num_local < 0:
            raise ValueError(f"MultiCropSpec.num_local={self.num_local!r}: give the number of "
                             "local crops as an integer >= 0 (0 turns local crops off)")
        for name, example in (("global_scale", "(0.4, 1.0)"), ("local_scale", "(0.05, 0.4)")):
            v = getattr(self, name)
            if not (_is_pair(v) and 0 < v[0] <= v[1] <= 1):
                raise ValueError(f"MultiCropSpec.{name}={v!r}: give the (low, high) fraction of "
                                 f"the image area a crop covers, 0 < low <= high <= 1, "
                                 f"e.g. {example}")
        for name in ("rotate", "shear"):
            v = getattr(self, name)
            if not (_is_real(v) and 0 <= v <= 90):
                raise ValueError(f"MultiCropSpec.{name}={v!r}: give the largest angle in degrees, "
                                 "0 <= angle <= 90 (0 turns it off)")
        for name in ("jitter_p", "gray_p", "morph_p"):
            v = getattr(self, name)
            if not _is_prob(v):
                raise ValueError(f"MultiCropSpec.{name}={v!r}: a probability must lie in [0, 1]")
        lo_hi = self.morph_strength
        if not (isinstance(lo_hi, tuple) and len(lo_hi) == 2 and all(_is_prob(x) for x in lo_hi)
                and lo_hi[0] <= lo_hi[1]):
            raise ValueError(f"MultiCropSpec.morph_strength={lo_hi!r}: give the (low, high) weight "
                             "of the max / min filter, 0 <= low <= high <= 1, e.g. (0.0, 1.0)")
        for name in ("blur_p", "solarize_p"):
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) == 3 and all(_is_prob(p) for p in v)):
                raise ValueError(f"MultiCropSpec.{name}={v!r}: give three probabilities in [0, 1] "
                                 "for (global crop 1, global crop 2, local crops)")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (_is_real(v) and v >= 0):
                raise ValueError(f"MultiCropSpec.{name}={v!r}: the jitter strength must be >= 0 "
                                 "(factors are drawn from [max(0, 1 - v), 1 + v]; 0 turns it off)")
        if not (_is_real(self.hue) and 0 <= self.hue <= 0.5):
            raise ValueError(f"MultiCropSpec.hue={self.hue!r}: the hue shift must lie in [0, 0.5] "
                             "(a fraction of the colour wheel; 0 turns it off)")
        if not (_is_pair(self.blur_sigma) and 0 <= self.blur_sigma[0] <= self.blur_sigma[1]):
            raise ValueError(f"MultiCropSpec.blur_sigma={self.blur_sigma!r}: give (low, high) with "
                             "0 <= low <= high, in pixels of a 224 crop, e.g. (0.1, 2.0)")
        for name in ("flip", "on_device"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"MultiCropSpec.{name}={getattr(self, name)!r}: give True or False")
        mean, std = self.stats  # raises for an unknown preset or a mean without std
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"MultiCropSpec.mean={mean} and std={std}: give as many values in "
                             "each (one per channel), or a single value that broadcasts")
        if not all(s > 0 for s in std):
            raise ValueError(f"MultiCropSpec.std={std}: every standard deviation must be > 0")


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(v)


def _is_prob(v: Any) -> bool:
    return _is_real(v) and 0 <= v <= 1


def _is_pair(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and all(_is_real(x) for x in v)


# ----------------------------------------------------------------------------- multi-crop
@functools.lru_cache(maxsize=16)
def _norm_tables(mean: tuple[float, ...], std: tuple[float, ...], c: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(C, 256) float32 tables: row k maps a uint8 value of channel k to its normalised value;
    the second one solarizes first (x >= 128 -> 255 - x), which makes solarize, DINO's last op
    before normalize, free.

    A lookup is one pass per channel where arithmetic on uint8 takes three (cast, scale,
    shift): about 2x faster, and the table is computed with transforms.normalize's formula, so
    the numbers are the same as its."""
    for what, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, c):
            raise ValueError(f"MultiCropSpec.{what}={v} does not fit a {c}-channel image: give "
                             f"{c} values or one, or convert the image (transforms.to_rgb/to_gray)")
    x = np.arange(256, dtype=np.float32)[:, None]
    table = (x * np.float32(1 / 255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    table = np.ascontiguousarray(np.broadcast_to(table, (256, c)).T)
    solarized = np.ascontiguousarray(table[:, solarize_lut(128)])
    for t in (table, solarized):
        t.setflags(write=False)
    return table, solarized


def _augment_crop(src: Image.Image, hw: tuple[int, int], size: int, scale: tuple[float, float],
                  blur_p: float, solarize_p: float, sigma: tuple[float, float],
                  spec: MultiCropSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One crop: uint8 (size, size, C) and its photometric row (photometric.draw). On the host
    path (spec.on_device False) the crop has been through the chain up to solarize, which the
    caller folds into normalisation; on the device path it has only been cut and shaped."""
    top, left, ch, cw = transforms.random_resized_crop_box(*hw, scale, rng=rng)
    im = src.resize((size, size), resample=Image.BICUBIC, box=(left, top, left + cw, top + ch))
    if spec.flip and rng.random() < 0.5:  # the draw of transforms.random_flip
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if spec.rotate or spec.shear:
        im = affine_pil(im, rng.uniform(-spec.rotate, spec.rotate) if spec.rotate else 0.0,
                        shear=rng.uniform(-spec.shear, spec.shear) if spec.shear else 0.0)
    if coin(rng, spec.morph_p):
        filtered = im.filter(ImageFilter.MaxFilter(3) if rng.random() < 0.5 else ImageFilter.MinFilter(3))
        lo, hi = spec.morph_strength
        im = filtered if lo == hi == 1.0 else Image.blend(im, filtered, float(rng.uniform(lo, hi)))
    row = photometric.draw(rng, jitter_p=spec.jitter_p, brightness=spec.brightness,
                           contrast=spec.contrast, saturation=spec.saturation, hue=spec.hue,
                           gray_p=spec.gray_p, blur_p=blur_p, sigma_range=sigma, solarize_p=solarize_p)
    if not spec.on_device:
        jitter = photometric.jitter_of(row)
        if jitter is not None:   # a strength of 0 skips its op (PIL's 8-bit HSV is no identity)
            strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
            im = pil_jitter_with(im, jitter[0], [f if v > 0 else None for f, v in zip(jitter[1], strengths)])
        if row[photometric.GRAY_AT]:
            im = pil_grayscale(im)
        if row[photometric.BLUR_AT]:
            im = pil_gaussian(im, row[photometric.SIGMA_AT])
    return transforms.from_pil(im), row


def sigma_pixels(spec: MultiCropSpec) -> tuple[float, float]:
    """The blur's sigma range in pixels of every crop: spec.blur_sigma scaled to the global crop."""
    k = spec.global_size / REFERENCE_SIZE  # one blur scale for all crops: see the docstring
    return spec.blur_sigma[0] * k, spec.blur_sigma[1] * k


def multi_crop(image: np.ndarray, rng: np.random.Generator, spec: MultiCropSpec
               ) -> dict[str, np.ndarray]:
    """One image -> {"global": (2, G, G, C), "local": (N, L, L, C)} float32, normalised; with
    spec.on_device, uint8 crops before the photometric chain and their rows, "global_photo"
    (2, NUM_PARAMS) and "local_photo" (N, NUM_PARAMS) float32 (photometric.apply, then
    normalisation, finish them on the device).

    ``image``: uint8 (H, W, C) or float in [0, 1] (rounded to uint8), C in {1, 3}; C is kept.
    G, L, N = spec.global_size, spec.local_size, spec.num_local; with N = 0 "local" is empty,
    shape (0, L, L, C), so batches stack the same way whatever N is.
    """
    img = as_uint8(image)
    h, w, c = img.shape
    tables = _norm_tables(*spec.stats, c)
    src = transforms.to_pil(img)
    sigma = sigma_pixels(spec)
    g, ls = spec.global_size, spec.local_size
    dtype = np.uint8 if spec.on_device else np.float32
    out = {"global": np.empty((2, g, g, c), dtype), "local": np.empty((spec.num_local, ls, ls, c), dtype),
           "global_photo": np.empty((2, photometric.NUM_PARAMS), np.float32),
           "local_photo": np.empty((spec.num_local, photometric.NUM_PARAMS), np.float32)}
    jobs = [("global", 0, g, spec.global_scale, spec.blur_p[0], spec.solarize_p[0]),
            ("global", 1, g, spec.global_scale, spec.blur_p[1], spec.solarize_p[1])]
    jobs += [("local", i, ls, spec.local_scale, spec.blur_p[2], spec.solarize_p[2])
             for i in range(spec.num_local)]
    for key, i, size, scale, bp, sp in jobs:
        crop, row = _augment_crop(src, (h, w), size, scale, bp, sp, sigma, spec, rng)
        out[key + "_photo"][i] = row
        if spec.on_device:
            out[key][i] = crop
            continue
        table = tables[1] if row[photometric.SOLARIZE_AT] else tables[0]
        for ch in range(c):  # solarize (maybe) and normalise in one lookup, into the output
            np.take(table[ch], crop[..., ch], out=out[key][i, ..., ch])
    if not spec.on_device:
        del out["global_photo"], out["local_photo"]
    return out


def multi_crop_transform(spec: MultiCropSpec, image_key: str = "image"
                         ) -> Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]:
    """A pipeline.TrainPipeline transform: example -> example with ``image_key`` replaced by
    "global" (2, G, G, C) and "local" (N, L, L, C), "label" (if any) as int32; other keys pass.
    Batched, "global" is (B, 2, G, G, C)."""
    spec.validate()

    def apply(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = {k: v for k, v in example.items() if k != image_key}
        out.update(multi_crop(example[image_key], rng, spec))
        if "label" in out:
            out["label"] = np.int32(out["label"])
        return out

    return apply

