"""DINO's photometric chain as data: its random parameters drawn on the host, the ops applied on
the device inside the jitted step (or on the host by multicrop.py's PIL path, from the same draw).

Per crop the chain is: colour jitter (probability jitter_p; brightness, contrast, saturation and
hue in a random order) -> grayscale (gray_p) -> Gaussian blur (blur_p, sigma ~ U(range)) ->
solarize (solarize_p, threshold 128 of 255). :func:`draw` takes its random numbers from the
example's rng in the order the host path always has (jitter coin, permutation, factors, grayscale
coin, blur coin, sigma, solarize coin; a probability of 0 or 1 draws no coin), and returns them as
one row of NUM_PARAMS (the *_AT offsets below). The host and the device chains read the
same row, so switching the chain to the device changes neither the crops' geometry nor the
parameters' distribution, and resume stays exact.

On the device (:func:`apply`) the ops follow torchvision's tensor semantics on floats in [0, 1]
(no truncation to uint8 between ops; hue through a float HSV; contrast blends with the
unrounded mean luma; the blur is a true Gaussian over +-ceil(3 sigma_max) pixels, edges
replicated as PIL does). The host path is PIL's (what DINO ran): 8-bit values after every op,
PIL's 8-bit HSV and its box-filter approximation of the Gaussian. tests/test_photometric.py
states how far the two are apart.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.data.color_ops import coin, draw_jitter

# One row of parameters per crop: float32 (NUM_PARAMS,)
JITTER_AT = 0        # 1.0: the colour jitter is applied
ORDER_AT = 1         # 4 entries: the op applied in each of the 4 slots (0 brightness, 1 contrast,
                     # 2 saturation, 3 hue), torchvision's randperm
FACTORS_AT = 5       # 4 entries: brightness, contrast, saturation factor (1: identity), hue shift
GRAY_AT = 9          # 1.0: replace the channels by the luma
BLUR_AT = 10         # 1.0: blur, with sigma (pixels of this crop) at SIGMA_AT
SIGMA_AT = 11
SOLARIZE_AT = 12     # 1.0: x >= 128 / 255 -> 1 - x
NUM_PARAMS = 13
LUMA = (0.299, 0.587, 0.114)   # ITU-R 601-2, PIL's "L"


def draw(rng: np.random.Generator, *, jitter_p: float, brightness: float, contrast: float,
         saturation: float, hue: float, gray_p: float, blur_p: float,
         sigma_range: tuple[float, float], solarize_p: float) -> np.ndarray:
    """One crop's parameters, float64 (NUM_PARAMS,) as drawn (the host's PIL chain uses them
    exactly; the device gets them as float32); ``sigma_range`` in pixels of the crop."""
    p = np.zeros(NUM_PARAMS, np.float64)
    p[ORDER_AT:ORDER_AT + 4] = np.arange(4)
    p[FACTORS_AT:FACTORS_AT + 3] = 1.0
    if coin(rng, jitter_p):
        order, factors = draw_jitter(rng, brightness, contrast, saturation, hue)
        p[JITTER_AT] = 1.0
        p[ORDER_AT:ORDER_AT + 4] = order
        identity = (1.0, 1.0, 1.0, 0.0)   # a strength of 0: the op changes nothing
        p[FACTORS_AT:FACTORS_AT + 4] = [identity[k] if f is None else f for k, f in enumerate(factors)]
    p[GRAY_AT] = coin(rng, gray_p)
    if coin(rng, blur_p):
        p[BLUR_AT], p[SIGMA_AT] = 1.0, rng.uniform(*sigma_range)
    p[SOLARIZE_AT] = coin(rng, solarize_p)
    return p


def jitter_of(p: np.ndarray) -> tuple[np.ndarray, list[float]] | None:
    """The (order, factors) of a row for the host's PIL jitter, or None when it is off."""
    if not p[JITTER_AT]:
        return None
    return p[ORDER_AT:ORDER_AT + 4].astype(int), [float(f) for f in p[FACTORS_AT:FACTORS_AT + 4]]


# ----------------------------------------------------------------------------- on the device
def _per_image(v: jax.Array) -> jax.Array:
    """(N,) -> (N, 1, 1, 1), to broadcast over (N, H, W, C)."""
    return v.reshape((-1, 1, 1, 1))


def luma(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H, W, 1): the ITU-R 601-2 luma of RGB; a 1-channel image itself."""
    if x.shape[-1] == 1:
        return x
    return jnp.tensordot(x, jnp.asarray(LUMA, x.dtype), axes=([-1], [0]))[..., None]


def adjust_brightness(x: jax.Array, f: jax.Array) -> jax.Array:
    """clip(f x, 0, 1); f (N,)."""
    return jnp.clip(_per_image(f) * x, 0.0, 1.0)


def adjust_contrast(x: jax.Array, f: jax.Array) -> jax.Array:
    """clip(m + f (x - m)), m the mean luma of each image; f (N,)."""
    m = jnp.mean(luma(x), axis=(1, 2, 3), keepdims=True)
    return jnp.clip(m + _per_image(f) * (x - m), 0.0, 1.0)


def adjust_saturation(x: jax.Array, f: jax.Array) -> jax.Array:
    """clip(g + f (x - g)), g each pixel's luma; a no-op on 1 channel."""
    if x.shape[-1] == 1:
        return x
    g = luma(x)
    return jnp.clip(g + _per_image(f) * (x - g), 0.0, 1.0)


def _rgb_to_hsv(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.max(x, axis=-1)
    c = v - jnp.min(x, axis=-1)
    s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1.0), 0.0)
    safe_c = jnp.where(c > 0, c, 1.0)
    h = jnp.where(v == r, (g - b) / safe_c,
                  jnp.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = jnp.where(c > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return h, s, v


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    # each channel k: v - v s max(0, min(t, 4 - t, 1)), t = (k_offset + 6 h) mod 6
    out = []
    for offset in (5.0, 3.0, 1.0):
        t = jnp.mod(offset + 6.0 * h, 6.0)
        out.append(v - v * s * jnp.clip(jnp.minimum(t, 4.0 - t), 0.0, 1.0))
    return jnp.stack(out, axis=-1)


def adjust_hue(x: jax.Array, shift: jax.Array) -> jax.Array:
    """Rotate the hue by ``shift`` turns (N,), through HSV; a no-op on 1 channel."""
    if x.shape[-1] == 1:
        return x
    h, s, v = _rgb_to_hsv(x)
    h = jnp.mod(h + shift.reshape((-1, 1, 1)), 1.0)
    return jnp.clip(_hsv_to_rgb(h, s, v), 0.0, 1.0)


def blur_radius(sigma_max: float) -> int:
    """The static half-width of the device blur's kernel: ceil(3 sigma_max), at least 1."""
    return max(1, int(math.ceil(3.0 * float(sigma_max))))


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """A separable Gaussian of standard deviation ``sigma`` (N,) pixels over +-``radius``, the
    edges replicated. (N, H, W, C) -> same."""
    k = jnp.arange(-radius, radius + 1, dtype=x.dtype)
    w = jnp.exp(-0.5 * (k[None, :] / jnp.maximum(sigma, 1e-6)[:, None]) ** 2)
    w = w / jnp.sum(w, axis=1, keepdims=True)                      # (N, 2r + 1)
    n, h, wd, _ = x.shape
    pad = jnp.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="edge")
    x = sum(w[:, i].reshape((-1, 1, 1, 1)) * pad[:, i:i + h] for i in range(2 * radius + 1))
    pad = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(w[:, i].reshape((-1, 1, 1, 1)) * pad[:, :, i:i + wd] for i in range(2 * radius + 1))


def apply(images: jax.Array, params: jax.Array, blur_radius_px: int) -> jax.Array:
    """The chain on a batch of crops: uint8 (or float in [0, 255]) (N, H, W, C) and their rows
    (N, NUM_PARAMS) -> float32 (N, H, W, C) in [0, 1], before normalisation. ``blur_radius_px``:
    :func:`blur_radius` of the largest sigma the rows can hold (static)."""
    x = images.astype(jnp.float32) / 255.0
    p = params.astype(jnp.float32)

    def on(at: int) -> jax.Array:   # (N, 1, 1, 1) bool: the row's switch at ``at``
        return _per_image(p[:, at] > 0.5)

    f = p[:, FACTORS_AT:FACTORS_AT + 4]
    jittered = x
    for slot in range(4):   # the op in each slot, as selected by the row's order
        op = _per_image(p[:, ORDER_AT + slot])
        candidates = (adjust_brightness(jittered, f[:, 0]), adjust_contrast(jittered, f[:, 1]),
                      adjust_saturation(jittered, f[:, 2]), adjust_hue(jittered, f[:, 3]))
        jittered = sum(jnp.where(op == k, c, 0.0) for k, c in enumerate(candidates))
    x = jnp.where(on(JITTER_AT), jittered, x)
    x = jnp.where(on(GRAY_AT), jnp.broadcast_to(luma(x), x.shape), x)
    x = jnp.where(on(BLUR_AT), gaussian_blur(x, p[:, SIGMA_AT], blur_radius_px), x)
    return jnp.where(on(SOLARIZE_AT) & (x >= 128.0 / 255.0), 1.0 - x, x)
