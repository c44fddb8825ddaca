"""Pictures: MAE reconstructions, EsViT region correspondences, attention maps, training curves.

Host-side numpy only (no jax computation): callers pass arrays they fetched with jax.device_get.
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from vit_jax.models.layers import pair

GRAY = 0.5          # masked patches in the "masked" panel, in [0, 1] display units
MIN_SIDE = 96       # default upscaling: small images (28x28 digits) become at least this tall
NORM_PIX_EPS = 1e-6  # as MAE's norm_pix_loss


def _patchify(images: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """(B, H, W, C) -> (B, L, ph*pw*C); the MAE order (row, column, channel)."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def _unpatchify(x: np.ndarray, ph: int, pw: int, gh: int, gw: int, c: int) -> np.ndarray:
    b = x.shape[0]
    x = x.reshape(b, gh, gw, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * ph, gw * pw, c)


def _to_display(x: np.ndarray, mean: Sequence[float] | float, std: Sequence[float] | float
                ) -> np.ndarray:
    """Normalised (B, H, W, C) -> [0, 1] pixels: x * std + mean, clipped."""
    mean_a = np.asarray(mean, np.float32).reshape(-1)
    std_a = np.asarray(std, np.float32).reshape(-1)
    return np.clip(x * std_a + mean_a, 0.0, 1.0)


def mae_grid(images: np.ndarray, pred: np.ndarray, mask: np.ndarray,
             patch_size: int | Sequence[int], mean: Sequence[float] | float = 0.0,
             std: Sequence[float] | float = 1.0, norm_pix_loss: bool = False,
             scale: int | None = None) -> np.ndarray:
    """MAE reconstruction picture: one row per image, [original | masked | reconstruction].

    images: (B, H, W, C) normalised as the model saw them, C in {1, 3}.
    pred: (B, L, ph*pw*C) the decoder's prediction; mask: (B, L), 1 = removed patch.
    mean, std: the normalisation (x / 255 - mean) / std, per channel or one value.
    norm_pix_loss: pred is in per-patch normalised units; it is mapped back with the mean and
        (unbiased) variance of each target patch, as MAE's visualisation does.
    scale: nearest-neighbour upscaling factor; None picks the smallest with H*scale >= 96.
    The reconstruction shows the original pixels on visible patches and the prediction on
    masked ones; the masked panel shows masked patches in gray.
    Returns uint8 (B*H*scale, 3*W*scale, 3).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, H, W, C) with C in (1, 3); got {images.shape}.")
    b, h, w, c = images.shape
    ph, pw = pair(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {ph}x{pw}.")
    gh, gw = h // ph, w // pw
    pred = np.asarray(pred, np.float32)[:b]
    mask = np.asarray(mask, np.float32)[:b] > 0.5
    if pred.shape != (b, gh * gw, ph * pw * c) or mask.shape != (b, gh * gw):
        raise ValueError(f"pred {pred.shape} / mask {mask.shape} do not match {b} images of "
                         f"{gh}x{gw} patches of {ph}x{pw}x{c}.")

    target = _patchify(images, ph, pw)
    if norm_pix_loss:
        mu = target.mean(-1, keepdims=True)
        var = target.var(-1, ddof=1, keepdims=True)
        pred = pred * np.sqrt(var + NORM_PIX_EPS) + mu
    recon = _unpatchify(np.where(mask[..., None], pred, target), ph, pw, gh, gw, c)
    pixel_mask = _unpatchify(np.broadcast_to(mask[..., None], target.shape).astype(np.float32),
                             ph, pw, gh, gw, c) > 0.5

    original = _to_display(images, mean, std)
    masked = np.where(pixel_mask, np.float32(GRAY), original)
    recon = _to_display(recon, mean, std)
    panels = np.concatenate([original, masked, recon], axis=2)       # (B, H, 3W, C)
    grid = panels.reshape(b * h, 3 * w, c)
    if c == 1:
        grid = np.repeat(grid, 3, axis=-1)
    if scale is None:
        scale = max(1, math.ceil(MIN_SIDE / h))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)  # nearest: crisp pixels
    return np.round(grid * 255.0).astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> str:
    """Writes a uint8 (H, W), (H, W, 1) or (H, W, 3) array as a PNG (creating the folder)."""
    from PIL import Image  # imported here: only picture writers need PIL

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"save_png wants uint8 pixels, got {array.dtype}; scale to [0, 255] first.")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def top_matches(tokens_a: np.ndarray, tokens_b: np.ndarray, top: int = 10) -> list[tuple[int, int, float]]:
    """The `top` most similar (i in a, j in b, cosine) pairs, each token of a matched to its most
    similar token of b (EsViT's region matching), best first. tokens: (T, D)."""
    a = tokens_a / np.maximum(np.linalg.norm(tokens_a, axis=-1, keepdims=True), 1e-12)
    b = tokens_b / np.maximum(np.linalg.norm(tokens_b, axis=-1, keepdims=True), 1e-12)
    sim = a @ b.T
    best = sim.argmax(axis=1)
    score = sim[np.arange(len(a)), best]
    order = np.argsort(-score, kind="stable")[:top]
    return [(int(i), int(best[i]), float(score[i])) for i in order]


def _grid_of(n: int, h: int, w: int) -> tuple[int, int]:
    """Token grid (gh, gw) of n tokens over an h x w image (square tokens)."""
    for gh in range(1, n + 1):
        if n % gh == 0 and abs(gh / (n // gh) - h / w) < 1e-6:
            return gh, n // gh
    raise ValueError(f"{n} tokens do not tile a {h}x{w} image.")


def ink_match_fraction(view_a: np.ndarray, view_b: np.ndarray, pairs: Sequence[tuple[int, int, float]],
                       n_a: int, n_b: int, mean: Sequence[float] | float = 0.0,
                       std: Sequence[float] | float = 1.0, threshold: float = 0.5) -> float:
    """The fraction of matched pairs (i in a, j in b) whose regions both fall on ink: the region of a
    token (its cell of the n-token grid over the view) holds a pixel >= `threshold` once the view is
    un-normalised to [0, 1]. Views (H, W, C) normalised; pairs as top_matches returns them."""
    def ink_cells(view: np.ndarray, n: int) -> np.ndarray:   # (n,) bool, row-major like the tokens
        v = _to_display(np.asarray(view, np.float32)[None], mean, std)[0].max(axis=-1)
        (gh, gw), (h, w) = _grid_of(n, *v.shape), v.shape
        return v.reshape(gh, h // gh, gw, w // gw).max(axis=(1, 3)).reshape(-1) >= threshold
    if not pairs:
        raise ValueError("ink_match_fraction needs at least one matched pair.")
    ink_a, ink_b = ink_cells(view_a, n_a), ink_cells(view_b, n_b)
    return float(np.mean([ink_a[i] and ink_b[j] for i, j, _ in pairs]))


def correspondence_picture(view_a: np.ndarray, view_b: np.ndarray, tokens_a: np.ndarray,
                           tokens_b: np.ndarray, mean: Sequence[float] | float = 0.0,
                           std: Sequence[float] | float = 1.0, top: int = 10,
                           scale: int | None = None) -> np.ndarray:
    """EsViT's correspondence figure: two views side by side, the `top` best-matched regions
    (token i of a -> its most similar token of b) joined by lines, one colour per pair.

    view_a, view_b: (H, W, C) normalised images; tokens_a (Ta, D), tokens_b (Tb, D) their final
    tokens in row-major grid order. Returns uint8 (H*s, 2*W*s + gap, 3).
    """
    from PIL import Image, ImageDraw

    panels = []
    for view in (view_a, view_b):
        v = _to_display(np.asarray(view, np.float32)[None], mean, std)[0]
        if v.shape[-1] == 1:
            v = np.repeat(v, 3, axis=-1)
        panels.append(v)
    h, w = panels[0].shape[:2]
    if scale is None:
        scale = max(1, math.ceil(4 * MIN_SIDE / h))
    gap = 8 * scale
    canvas = np.ones((h * scale, 2 * w * scale + gap, 3), np.float32)
    for k, v in enumerate(panels):
        up = np.repeat(np.repeat(v, scale, axis=0), scale, axis=1)
        x0 = k * (w * scale + gap)
        canvas[:, x0:x0 + w * scale] = up
    image = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    grids = [_grid_of(len(t), h, w) for t in (tokens_a, tokens_b)]
    pairs = top_matches(np.asarray(tokens_a, np.float32), np.asarray(tokens_b, np.float32), top)
    colours = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]

    def centre(k: int, idx: int) -> tuple[float, float]:
        gh, gw = grids[k]
        r, c = divmod(idx, gw)
        x0 = k * (w * scale + gap)
        return x0 + (c + 0.5) * w * scale / gw, (r + 0.5) * h * scale / gh

    for n, (i, j, _) in enumerate(pairs):
        (xa, ya), (xb, yb) = centre(0, i), centre(1, j)
        colour = colours[n % len(colours)]
        draw.line([(xa, ya), (xb, yb)], fill=colour, width=max(1, scale // 2))
        for x, y in ((xa, ya), (xb, yb)):
            rad = max(2, scale)
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], outline=colour, width=max(1, scale // 3))
    return np.asarray(image, np.uint8)


def _upscale_map(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """(gh, gw) map -> (h, w), nearest (each patch one block), scaled to [0, 1]."""
    m = np.asarray(m, np.float32)
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    return np.repeat(np.repeat(m, h // m.shape[0], axis=0), w // m.shape[1], axis=1)


def attention_picture(images: np.ndarray, maps: np.ndarray, mean: Sequence[float] | float = 0.0,
                      std: Sequence[float] | float = 1.0, scale: int | None = None) -> np.ndarray:
    """One row per image: the image, then one heat map per map (e.g. per head, or a rollout)
    laid over it (red = most attention).

    images (B, H, W, C) normalised; maps (B, M, gh, gw) or (B, gh, gw) with H, W multiples of gh, gw.
    Returns uint8 (B*H*s, (M+1)*W*s, 3).
    """
    images = _to_display(np.asarray(images, np.float32), mean, std)
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 3:
        maps = maps[:, None]
    b, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=-1)
    rows = []
    for i in range(b):
        panels = [images[i]]
        grey = images[i].mean(-1, keepdims=True)
        for m in maps[i]:
            heat = _upscale_map(m, h, w)[..., None]
            red = np.concatenate([heat, 0.15 * heat, 0.15 * heat], axis=-1)
            panels.append(np.clip(0.45 * grey + 0.75 * red, 0.0, 1.0))
        rows.append(np.concatenate(panels, axis=1))
    grid = np.concatenate(rows, axis=0)
    if scale is None:
        scale = max(1, math.ceil(MIN_SIDE / h))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return np.round(grid * 255.0).astype(np.uint8)


def read_metrics(path: str) -> list[dict]:
    """The rows of a run's metrics.jsonl (a workdir or the file itself)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def curves_figure(path: str, keys: Sequence[str] = ("train/loss", "eval/test/accuracy")):
    """A matplotlib figure with one panel per metric of a run (workdir or metrics.jsonl) against
    the step; keys missing from the run are skipped. Needs matplotlib (pip install matplotlib)."""
    import matplotlib.pyplot as plt   # picks a headless backend by itself; inline in Jupyter

    rows = read_metrics(path)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        raise ValueError(f"none of the metrics {list(keys)} is in {path}.")
    keys = present
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 20 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def predictions_figure(images: Sequence[np.ndarray], probs: np.ndarray, labels: Sequence[int],
                       class_names: Sequence[str] | None = None):
    """A matplotlib figure: each image titled with its predicted class and probability, green when
    right and red when wrong. images: raw (H, W, C) or (H, W) pixels; probs (B, K); labels (B,)."""
    import matplotlib.pyplot as plt

    probs = np.asarray(probs)
    if len(images) != len(probs) or len(labels) != len(probs):
        raise ValueError(f"{len(images)} images, {len(probs)} rows of probabilities and {len(labels)} "
                         "labels; give one of each per example.")
    names = list(class_names) if class_names is not None else [str(k) for k in range(probs.shape[-1])]
    fig, axes = plt.subplots(1, len(images), figsize=(1.5 * len(images), 2.0), squeeze=False)
    for ax, image, p, label in zip(axes[0], images, probs, labels):
        image = np.asarray(image)
        grey = image.ndim == 2 or image.shape[-1] == 1
        ax.imshow(image.reshape(image.shape[:2]) if grey else image, cmap="gray" if grey else None)
        k = int(p.argmax())
        ax.set_title(f"{names[k]}\n{p[k]:.0%}", color="green" if k == int(label) else "red", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
