"""What an objective needs to know about the data before it builds its model."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataInfo:
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) after the train transform
    num_train: int
