"""Decoding image files on the host: whole, or only at the resolution a resized crop needs.

`decode_file(path)` decodes a file whole (RGB uint8 (H, W, 3)) or says what is wrong with it.
`EncodedImage` is a file read up to its header: its size is known, its pixels are not decoded
yet. `np.asarray` decodes it whole; `decode_resized(out_hw, box)` decodes only what a resized
crop needs: a JPEG is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg's DCT scaling (PIL's
`draft`) whenever the crop box, scaled by that factor, still has at least the output's pixels
on both axes, and then cropped and resized as the full-size path does. When no factor applies
(the crop is less than twice the output) the result is the full-size path's, bit for bit; when
one does, the pixels differ slightly (DCT scaling averages the dropped resolution before the
bilinear resize, which then shrinks less). PNG files have no DCT scaling: always decoded whole.

The image-folder source hands out EncodedImage with data.decode="draft"; the transforms that
start with a resize (`random_resized_crop`, `resize`, `resize_center_crop`) take one as it is,
every other first op receives the decoded array.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from vit_jax.errors import DataError

# What PIL raises on a broken file (plugins use SyntaxError, struct/zlib errors leak through).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                 Image.DecompressionBombError)
DRAFT_HINT = ("remove or replace the file (with data.decode='draft' the file is decoded inside the "
              "transform, where it cannot be skipped)")


def describe_failure(e: BaseException, fmt: str) -> str:
    """A short diagnosis of a PIL failure: "truncated JPEG (...)" or "not a readable image: ..."."""
    if "truncated" in str(e).lower():  # PIL: "image file is truncated", "Truncated File Read"
        return f"truncated {fmt} ({e})"
    if isinstance(e, UnidentifiedImageError):  # its message only repeats the path
        return "not a readable image: PIL cannot identify its format"
    return f"not a readable image: {type(e).__name__}: {e}"


def file_format(path: str) -> str:
    """The format a file's name promises (PIL may fail before it tells the real one)."""
    return "PNG" if path.lower().endswith(".png") else "JPEG"


def decode_file(path: str) -> np.ndarray | str:
    """The file as RGB uint8 (H, W, 3), or what is wrong with it. Decoding is forced here (load())
    so a truncated file fails now, with its name, not later inside a transform."""
    fmt = file_format(path)
    try:
        with Image.open(path) as im:
            fmt = im.format or fmt
            im.load()
            return np.asarray(im.convert("RGB"))
    except DECODE_ERRORS as e:
        return describe_failure(e, fmt)


def draft_factor(hw: tuple[int, int], out_hw: tuple[int, int],
                 box: tuple[float, float, float, float] | None = None) -> int:
    """The DCT scaling (1, 2, 4 or 8) PIL's JPEG draft picks so that the (left, top, right,
    bottom) box of an hw image keeps at least out_hw pixels: the largest power of two at most
    min(box width / out width, box height / out height)."""
    h, w = hw
    left, top, right, bottom = box if box is not None else (0, 0, w, h)
    room = min((right - left) / out_hw[1], (bottom - top) / out_hw[0])
    return next(k for k in (8, 4, 2, 1) if k <= room or k == 1)


def jpeg_draft(im: Image.Image, k: int) -> int:
    """Asks PIL's JPEG decoder (before it decodes) for 1/k of the size, k in (2, 4, 8); returns
    the factor it will decode at: k, or 1 for a file without DCT scaling (PNG)."""
    w, h = im.size
    # PIL takes the largest of 8, 4, 2 that is <= min(w // request_w, h // request_h): with the
    # floors below that is k (a ceil would make 375 // 188 = 1 and turn the scaling off)
    drafted = im.draft("RGB", (w // k, h // k))
    return round(w / drafted[1][2]) if drafted else 1


class EncodedImage:
    """An image file whose header has been read: `hw` = (height, width); pixels decoded on use."""

    def __init__(self, path: str, hw: tuple[int, int]):
        self.path, self.hw = path, (int(hw[0]), int(hw[1]))

    @classmethod
    def open(cls, path: str) -> EncodedImage | str:
        """The file's header read, or what is wrong with it."""
        try:
            with Image.open(path) as im:
                w, h = im.size
        except DECODE_ERRORS as e:
            return describe_failure(e, file_format(path))
        return cls(path, (h, w))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        image = decode_file(self.path)
        if isinstance(image, str):
            raise DataError(f"image {self.path}: {image}; {DRAFT_HINT}")
        return image if dtype is None else image.astype(dtype)

    def decode_resized(self, out_hw: tuple[int, int],
                       box: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """The (left, top, right, bottom) box (default: all) resized bilinearly to out_hw:
        RGB uint8 (out_h, out_w, 3), decoded at the smallest JPEG scale that keeps out_hw."""
        h, w = self.hw
        box = box if box is not None else (0, 0, w, h)
        k = draft_factor(self.hw, out_hw, box)
        try:
            with Image.open(self.path) as im:
                k = jpeg_draft(im, k) if k > 1 else 1
                im = im.convert("RGB")
                scaled = tuple(v / k for v in box)
                return np.asarray(im.resize((out_hw[1], out_hw[0]), Image.BILINEAR, box=scaled))
        except DECODE_ERRORS as e:
            raise DataError(f"image {self.path}: {describe_failure(e, file_format(self.path))}; "
                            f"{DRAFT_HINT}") from e

    def __repr__(self) -> str:
        return f"EncodedImage({self.path!r}, hw={self.hw})"
