"""Position embeddings: MAE's fixed 2-D sin-cos table, and resizing a learned table to a new patch
grid (bilinear; bicubic with torch's align_corners=False kernel; DINO's bicubic with its +0.1
scale-factor offset). Tables are (1, P + h*w, D) with P prefix tokens (class / distillation) first.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim): [sin(pos*w_k), cos(pos*w_k)], w_k = 10000^(-k/(dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, cls_token: bool = False) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding in MAE's layout, shape (1, [1+] grid_h*grid_w, dim).

    Tokens are row-major over (h, w).  The first dim/2 channels encode the column (w)
    coordinate, the last dim/2 the row (h); each half is [sin, cos] with
    w_k = 10000^(-k/(dim/4)).  With cls_token a zero row is prepended.  float32 numpy
    (a constant, never a parameter).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}.")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb[None].astype(np.float32)


def torch_bicubic_matrix(n_in: int, n_out: int, scale: float | None = None) -> np.ndarray:
    """(n_out, n_in) weights of torch's bicubic resize (align_corners=False, A=-0.75, edge clamp).

    torch computes source x = (o + 0.5) * scale - 0.5, scale = n_in / n_out, or 1 / scale_factor
    when F.interpolate is given a scale_factor (DINO's +0.1 offset), and mixes the 4 pixels around
    it with Keys' cubic (A = -0.75), clamping indices at the borders; jax.image.resize uses
    A = -0.5 and renormalises at the edges, which differs by ~1e-2.  DINOv2 and CLIP resize
    their position embeddings this way, so parity needs this exact kernel.
    """
    a = -0.75

    def near(t):   # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):    # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    w = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out if scale is None else scale
    for o in range(n_out):
        x = (o + 0.5) * scale - 0.5
        i0 = int(np.floor(x))
        t = x - i0
        coeffs = (far(t + 1), near(t), near(1 - t), far(2 - t))
        for k, c in enumerate(coeffs):
            w[o, min(max(i0 - 1 + k, 0), n_in - 1)] += c
    return w


def resize_pos_embed(posemb: Array, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                     old_grid: tuple[int, int] | None = None, method: str = "bilinear",
                     antialias: bool = False) -> Array:
    """Resize a (1, P + h*w, D) position embedding to (1, P + H*W, D) for a new patch grid.

    The P prefix rows (cls / distillation tokens) are kept as they are; the grid rows are
    interpolated (half-pixel centres, like torch's align_corners=False).  `old_grid`
    defaults to a square grid.  method: "bilinear" (jax.image.resize; antialias=False
    matches torch F.interpolate), "bicubic" (torch's bicubic exactly, see
    `torch_bicubic_matrix`; DINOv2 / CLIP) or "bicubic_dino" (facebookresearch/dino's
    interpolate_pos_encoding: torch's bicubic with scale_factor (n_out + 0.1) / n_in, the offset it
    adds against floating-point error, so the source grid is sampled at n_in / (n_out + 0.1)).
    """
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    n, d = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"pos-emb has {n} grid rows, not a square: pass old_grid=(h, w).")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    grid = grid.reshape(old_grid[0], old_grid[1], d).astype(jnp.float32)
    if method in ("bicubic", "bicubic_dino"):
        wh, ww = (jnp.asarray(torch_bicubic_matrix(
            n, m, n / (m + 0.1) if method == "bicubic_dino" else None), jnp.float32)
            for n, m in zip(old_grid, new_grid))
        grid = jnp.einsum("Hh,hwd,Ww->HWd", wh, grid, ww, precision=jax.lax.Precision.HIGHEST)
    elif method == "bilinear":
        grid = jax.image.resize(grid, (new_grid[0], new_grid[1], d), method=method,
                                antialias=antialias)
    else:
        raise ValueError(f"pos-emb resize method must be 'bilinear', 'bicubic' or 'bicubic_dino', "
                         f"got {method!r}.")
    grid = grid.astype(posemb.dtype)
    return jnp.concatenate([prefix, grid.reshape(1, new_grid[0] * new_grid[1], d)], axis=1)
