"""mnist5k for benchmarks/official_dino_mnist5k.py: the split as PIL images, the official
DataAugmentationDINO edited for 28-px digits, the k-NN transform, a truncated loader.

torchvision is imported inside the functions on purpose: official_dino_mnist5k.py first registers
torchvision's pure-Python package (its C extension does not load on the CPU torch build).
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from PIL import Image

from vit_jax.data import mnist5k

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
GLOBAL_SIZE, LOCAL_SIZE = 28, 12          # official: 224 / 96
OFFICIAL_GLOBAL_SIZE, OFFICIAL_LOCAL_SIZE = 224, 96


# ----------------------------------------------------------------------------- data
class Mnist5kPIL(torch.utils.data.Dataset):
    """mnist5k split as (PIL 'L' image, label) pairs."""

    def __init__(self, split: str, transform):
        src = mnist5k(split)
        self.images, self.labels = src.images[..., 0], src.labels
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(np.asarray(self.images[i]), mode="L")), \
            int(self.labels[i])


def mnist_augmentation(official, global_scale, local_scale, local_crops_number,
                       local_size=LOCAL_SIZE, solarize=True):
    """main_dino.DataAugmentationDINO, edited in place: sizes 28 / local_size, no flip, MNIST
    normalisation; without solarize also no utils.Solarization."""
    aug = official.main_dino.DataAugmentationDINO(tuple(global_scale), tuple(local_scale),
                                                  local_crops_number)
    return edit_for_mnist(aug, official.utils.Solarization, local_size, solarize)


def edit_for_mnist(aug, solarization_cls, local_size=LOCAL_SIZE, solarize=True):
    """Edit an official DataAugmentationDINO (DINO's, or EsViT's whose local_transfo is a list of
    one pipeline per local size) in place for 28-px digits; returns it."""
    from torchvision import transforms as T
    changed = {"flip": 0, "crop": 0, "normalize": 0, "solarize": 0}
    size_map = {(OFFICIAL_GLOBAL_SIZE,) * 2: (GLOBAL_SIZE,) * 2,
                (OFFICIAL_LOCAL_SIZE,) * 2: (local_size,) * 2}

    def edit(t):
        if isinstance(t, (T.Compose, T.RandomApply)):
            kept = []
            for s in t.transforms:
                if isinstance(s, T.RandomHorizontalFlip):
                    changed["flip"] += 1
                    continue
                if not solarize and isinstance(s, solarization_cls):
                    changed["solarize"] += 1
                    continue
                kept.append(edit(s))
            t.transforms = kept
        elif isinstance(t, T.RandomResizedCrop):
            if tuple(t.size) in size_map:
                t.size = size_map[tuple(t.size)]
                changed["crop"] += 1
        elif isinstance(t, T.Normalize):
            t.mean, t.std = MNIST_MEAN, MNIST_STD
            changed["normalize"] += 1
        return t

    local = aug.local_transfo if isinstance(aug.local_transfo, list) else [aug.local_transfo]
    for pipe in (aug.global_transfo1, aug.global_transfo2, *local):
        edit(pipe)
    # the flip/jitter and normalize Compose objects are shared by the 3 pipelines: the flip goes once
    if (changed["crop"] != 3 or changed["flip"] != 1 or changed["normalize"] < 1
            or changed["solarize"] != (0 if solarize else 1)):
        raise RuntimeError(f"DataAugmentationDINO has an unexpected structure ({changed}); "
                           "check the official code's augmentation class")
    return aug


def eval_transform():
    from torchvision import transforms as T
    return T.Compose([T.ToTensor(), T.Normalize(MNIST_MEAN, MNIST_STD)])


class TruncatedLoader:
    """A DataLoader cut to n steps per epoch (smoke tests); len() is what train_one_epoch sees."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, min(n, len(loader))

    def __len__(self):
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)
