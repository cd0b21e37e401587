"""Datasets as [-1, 1] float32 (C, H, W) images with int labels, forget/remain splits, endless batches."""

from erasediff.data.batches import InfiniteBatches
from erasediff.data.datasets import DATASETS, LabeledImages, dataset_from_config, images_of_classes, load_dataset
from erasediff.data.splits import forget_remain_split

__all__ = ["DATASETS", "InfiniteBatches", "LabeledImages", "dataset_from_config", "forget_remain_split", "images_of_classes", "load_dataset"]
