"""A labelled image dataset with its labels precomputed: what every dataset loader returns (data/)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class LabeledImages:
    """A labelled image dataset with its labels precomputed.

    dataset: item i -> (image float32 (C, H, W) in [-1, 1], label int).
    labels: (N,) int64 with labels[i] == dataset[i][1].
    """

    dataset: Dataset
    labels: torch.Tensor
    num_classes: int
    class_names: list[str]
    channels: int
    image_size: int
    name: str
