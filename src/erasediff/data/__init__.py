"""Datasets as [-1, 1] float32 (C, H, W) images with int labels, forget/remain splits, endless batches;
Imagenette's real and generated images for the Stable Diffusion evaluation (`imagenette`)."""

from erasediff.data.batches import InfiniteBatches
from erasediff.data.datasets import (
           DATASETS,
           LabeledImages,
           dataset_from_config,
           images_of_classes,
           load_dataset,
)
from erasediff.data.imagenette import RealImagenette, read_generated
from erasediff.data.splits import forget_remain_split

__all__ = ["DATASETS", "InfiniteBatches", "LabeledImages", "RealImagenette", "dataset_from_config", "forget_remain_split",
           "images_of_classes", "load_dataset", "read_generated"]
