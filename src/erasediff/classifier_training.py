"""`train-classifier`: the evaluation classifier, trained on real images of the config's dataset.

The `classifier` config section picks the architecture (docs/evaluation.md "Evaluation judges"):
- digits_cnn: the small CNN of `metrics.classifier` (offline digits, CPU, ~30 s);
- resnet34: SA's CIFAR10 judge (docs/evaluation.md "Evaluation judges"), an ImageNet-pretrained torchvision ResNet34 fine-tuned on
  the 32 px images resized to 224 px inside the model, with SA's Adam recipe (body lr, head lr_head,
  weight decay, random horizontal flip). Needs a GPU in practice and, with pretrained: true, the
  ImageNet weights (downloaded on first use).
Trained on the train split (all classes), accuracy reported on the test split; saved with
`save_classifier` so that `load_classifier` (evaluation) rebuilds it without downloads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .data import dataset_from_config
from .device import resolve_device
from .metrics import (
    accuracy_metrics,
    classifier_outputs,
    save_classifier,
    train_classifier,
)


def _stack(data) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N, C, H, W) in [-1, 1] and labels (N,) of a `LabeledImages`, in memory."""
    tensors = getattr(data.dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        return tensors[0], data.labels
    images = torch.stack([data.dataset[i][0] for i in range(len(data.dataset))])
    return images, data.labels


def train_eval_classifier(cfg: RunConfig, out: Path, progress: bool = True,
                          device: str | torch.device | None = None) -> dict[str, Any]:
    """Train on the train split, measure test accuracy, save to `out`; returns the info dict.

    device: where to train (default: the config's `device`, "auto" = CUDA when available). The
    saved classifier.json holds the architecture and the returned info (test_acc, train_time_s, ...).
    """
    d, c = cfg.data, cfg.classifier
    if device is None:
        device = resolve_device(cfg.device)
    device = torch.device(device)
    train = dataset_from_config(d, "train", hflip=False)  # augmentation happens in train_classifier
    test = dataset_from_config(d, "test", hflip=False)
    x_train, y_train = _stack(train)
    x_test, y_test = _stack(test)
    t0 = time.perf_counter()
    model = train_classifier(
        x_train, y_train, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, seed=c.seed, augment=c.augment,
        progress=progress, in_channels=train.channels, image_size=train.image_size, num_classes=train.num_classes,
        arch=c.arch, input_size=c.image_size, pretrained=c.pretrained and c.arch == "resnet34",
        lr_head=c.lr_head, weight_decay=c.weight_decay, device=device,
    )
    wall = time.perf_counter() - t0
    logits, _ = classifier_outputs(model, x_test, batch_size=512 if c.arch == "digits_cnn" else 128)
    info = {"test_acc": accuracy_metrics(logits, y_test)["acc"], "train_time_s": round(wall, 2),
            "dataset": d.dataset, "epochs": c.epochs, "pretrained": c.pretrained and c.arch == "resnet34",
            "device": str(device)}
    save_classifier(model.cpu(), out, extra=info)
    return info
