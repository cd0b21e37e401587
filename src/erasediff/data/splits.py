"""Forget/remain splits: D_f = the images of the classes to forget, D_r = all the others."""

from __future__ import annotations

from typing import Sequence

import torch

from erasediff.errors import DataError


def forget_remain_split(labels: torch.Tensor, forget_classes: Sequence[int], num_classes: int, *,
                        forget_ratio: float | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split dataset positions into (forget_idx, remain_idx), int64 tensors sorted ascending.

    labels: (N,) int64 class of each dataset item. An empty `forget_classes` gives an empty D_f and
    D_r = everything (pretraining).

    forget_ratio reproduces the official code's subsampling of D_f (`unl_ratio`, docs/method.md "Paper-vs-code choices" 11):
    |D_f| = min(|forget images|, int(r * |D_r| / (1 - r))), a random subset drawn with a
    torch.Generator seeded by `seed`. On CIFAR10 (5000 images per class) with r = 0.1: one forget
    class gives int(0.1 * 45000 / 0.9) = 5000 (all of them); bird (2) + ship (8) give
    int(0.1 * 40000 / 0.9) = 4444 of their 10000. None keeps all forget images.
    """
    classes = [int(c) for c in forget_classes]
    for c in classes:
        if not 0 <= c < num_classes:
            raise DataError(f"forget class {c} is out of range: valid classes are 0..{num_classes - 1}")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise DataError(f"forget classes {duplicates} are listed more than once: list each class once")
    if forget_ratio is not None and not 0.0 < forget_ratio < 1.0:
        raise DataError(f"forget_ratio must be in (0, 1) or unset (got {forget_ratio})")
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
    is_forget = torch.isin(labels, torch.tensor(classes, dtype=torch.int64))
    forget_idx = torch.nonzero(is_forget).flatten()
    remain_idx = torch.nonzero(~is_forget).flatten()
    if classes and len(forget_idx) == 0:
        raise DataError(f"forget set is empty: no image has class {classes} (dataset has {len(labels)} images)")
    if len(remain_idx) == 0:
        raise DataError(f"remain set is empty: every image has a forget class {classes}; keep at least one class")
    if forget_ratio is not None and classes:
        n = min(len(forget_idx), int(forget_ratio * len(remain_idx) / (1 - forget_ratio)))
        if n == 0:
            raise DataError(f"forget set is empty after subsampling: forget_ratio {forget_ratio} of "
                            f"{len(remain_idx)} remain images keeps none; raise forget_ratio or unset it")
        pick = torch.randperm(len(forget_idx), generator=torch.Generator().manual_seed(seed))[:n]
        forget_idx = forget_idx[pick].sort().values
    return forget_idx, remain_idx
