"""Image-folder source: root/CLASS/*.png|jpg|jpeg or root/SPLIT/CLASS/*.png|jpg|jpeg (host side).

Also the two index/split checks every source shares (vit_jax/data/sources.py imports them from
here, so this module depends on nothing of vit_jax but the errors, image_decode and path_table).

An unreadable file (truncated, corrupt, not an image) raises DataError naming it, or, with
``skip_bad_images=True``, is replaced by the next readable file (wrapping around): a pure function
of the index, so the pipeline stays reproducible and resumable; each skipped file is noted once.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vit_jax.data.image_decode import (  # noqa: F401  (DECODE_ERRORS, describe_failure: re-exported)
    DECODE_ERRORS, EncodedImage, decode_file, describe_failure, file_format)
from vit_jax.data.path_table import PathTable
from vit_jax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDER_LAYOUT = ("expected root/CLASS_NAME/*.png|jpg|jpeg, or root/SPLIT/CLASS_NAME/*.png|jpg|jpeg "
                 "(classes sorted alphabetically give the label ids)")
SKIP_HINT = "remove or replace the file, or set data.skip_bad_images=True to skip unreadable files"
DECODES = ("full", "draft")   # draft: the header now, the pixels in the transform (image_decode.py)
HEADER_SAMPLE = 256  # files whose size image_sizes() reads: bounded, so validation stays fast


def check_index(i: int, n: int) -> int:
    i = int(i)  # accepts numpy integers
    if i < 0:
        i += n
    if not 0 <= i < n:  # IndexError keeps the plain ``for x in src`` protocol working
        raise IndexError(f"index {i} out of range for a source of length {n}")
    return i


def check_split(name: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {name!r}; valid splits: {', '.join(valid)}")


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images_in(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path)
                  if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def folder_layout(root: str) -> tuple[list[str], list[str]]:
    """-> (splits, classes). Split layout when the root's subfolders themselves hold folders.

    In the split layout the classes are the sorted UNION over all splits, so label ids agree across
    splits even when a split lacks some class.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist; {FOLDER_LAYOUT}")
    top = _subdirs(root)
    if not top:
        raise ValueError(f"image folder {root!r} has no class subfolders; {FOLDER_LAYOUT}")
    if any(_subdirs(os.path.join(root, d)) for d in top):
        classes = sorted({c for d in top for c in _subdirs(os.path.join(root, d))})
        return top, classes
    return ["all"], top


class ImageFolderSource:
    """Images decoded lazily with PIL, always converted to RGB: (H, W, 3) uint8.

    RGB always (even for grayscale files) so that one folder never mixes channel counts.
    decode="draft": a row's "image" is an EncodedImage (the header read, vit_jax/data/image_decode.py)
    that a first resize op decodes at the JPEG scale its output needs, any other op whole.
    ``image_shape`` is None: folder images may differ in size and reading every header is not cheap
    (``image_sizes`` reads a bounded sample). ``skipped`` counts the unreadable files skipped.
    """

    def __init__(self, root: str, split: str | None = None, skip_bad_images: bool = False,
                 decode: str = "full"):
        if decode not in DECODES:
            raise ValueError(f"decode={decode!r}: use one of {DECODES}")
        if decode == "draft" and skip_bad_images:
            raise ValueError("decode='draft' decodes each file inside the transform, where an unreadable "
                             "file can no longer be replaced by the next: use skip_bad_images=False "
                             "(it stops at the file, naming it) or decode='full'")
        self.decode = decode
        root = os.path.abspath(os.path.expanduser(root))
        splits, self.classes = folder_layout(root)
        if split is None:
            split = "all" if splits == ["all"] else ""
        check_split(f"folder:{root}", split, splits)
        base = root if split == "all" else os.path.join(root, split)
        self.root, self.split, self.num_classes = root, split, len(self.classes)
        self.image_shape: tuple[int, int, int] | None = None
        # one directory per class, in label order (a class this split lacks lists no files), so a
        # file's directory id is its label; listed one class at a time (path_table.py)
        dirs = [os.path.join(base, cls) for cls in self.classes]
        self.files = PathTable(dirs, (_images_in(d) if os.path.isdir(d) else [] for d in dirs))
        if not len(self.files):
            raise ValueError(f"no .png/.jpg/.jpeg images under {base!r}; {FOLDER_LAYOUT}")
        self.skip_bad_images = bool(skip_bad_images)
        self.skipped = 0
        self._bad: set[int] = set()
        self._lock = threading.Lock()  # the pipeline reads from a thread pool

    @property
    def labels(self) -> np.ndarray:
        """Each file's label (int32, memory-mapped): its class directory's id in `files`."""
        return self.files.dir_index

    def __getstate__(self) -> dict[str, Any]:
        # worker processes (data.loader="grain") receive the source by pickle: not its lock; its
        # files pickle as the name of their index (path_table.py), whatever their number
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.files)

    def unreadable(self) -> frozenset[int]:
        """The indices of the files met unreadable so far (skip_bad_images=True): each batch
        reports the new ones, for the run's count (vit_jax/data/skipped_files.py)."""
        with self._lock:
            return frozenset(self._bad)

    def _bad_file(self, j: int, why: str) -> None:
        """File j is unreadable: DataError naming it, or (skip_bad_images) remember it and note it
        once, by whichever reader meets it first."""
        if not self.skip_bad_images:
            raise DataError(f"image {self.files[j]}: {why}; {SKIP_HINT}")
        with self._lock:
            if j in self._bad:
                return
            self._bad.add(j)
            self.skipped += 1
        print(f"note: skipping unreadable image {self.files[j]}: {why} (data.skip_bad_images=True)",
              flush=True)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = check_index(i, len(self))
        for k in range(len(self)):  # i itself, then the next files, wrapping around
            j = (i + k) % len(self)
            if j in self._bad:
                continue
            image = (EncodedImage.open if self.decode == "draft" else decode_file)(self.files[j])
            if not isinstance(image, str):
                return {"image": image, "label": int(self.labels[j])}
            self._bad_file(j, image)
        raise DataError(f"none of the {len(self)} images under {self.root} can be read "
                        f"(data.skip_bad_images=True skipped them all); check the folder")

    def image_sizes(self, max_files: int = HEADER_SAMPLE) -> dict[int, tuple[int, int]]:
        """{index: (height, width)} of up to ``max_files`` files spread evenly over the source,
        from their headers only (no decoding). An unreadable header: DataError, or skipped."""
        n = len(self)
        out: dict[int, tuple[int, int]] = {}
        for j in sorted({int(x) for x in np.linspace(0, n - 1, min(n, max_files)).round()}):
            path = self.files[j]
            if j in self._bad:
                continue
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except DECODE_ERRORS as e:
                self._bad_file(j, describe_failure(e, file_format(path)))
                continue
            out[j] = (h, w)
        return out

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.root!r}, split={self.split!r}, n={len(self)})"


def image_folder(root: str, split: str | None = None, skip_bad_images: bool = False,
                 decode: str = "full") -> ImageFolderSource:
    """root/CLASS/*.png|jpg|jpeg (split None or "all") or root/SPLIT/CLASS/... (split required)."""
    return ImageFolderSource(root, split, skip_bad_images=skip_bad_images, decode=decode)
