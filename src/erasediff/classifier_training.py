"""`train-classifier`: the evaluation classifier, trained on real images of the config's dataset.

Digits (offline): the small CNN of `metrics.classifier`, trained on the train split, accuracy reported
on the test split. (CIFAR10's ImageNet-pretrained ResNet34 fine-tuned at 224 px, as SA does, is not
available offline and is not built yet.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .data import load_dataset
from .errors import ConfigError
from .metrics import DigitsCNN, accuracy_metrics, classifier_outputs, save_classifier, train_classifier


def _stack(data) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([data.dataset[i][0] for i in range(len(data.dataset))])
    return images, data.labels


def train_eval_classifier(cfg: RunConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Train on the train split, measure test accuracy, save to `out`; returns the info dict."""
    d, c = cfg.data, cfg.classifier
    if d.dataset != "digits":
        raise ConfigError(f"train-classifier supports data.dataset 'digits' in this version (got '{d.dataset}'); valid: digits")
    train = load_dataset(d.dataset, root=d.root, split="train", image_size=d.image_size)
    test = load_dataset(d.dataset, root=d.root, split="test", image_size=d.image_size)
    x_train, y_train = _stack(train)
    x_test, y_test = _stack(test)
    t0 = time.perf_counter()
    model: DigitsCNN = train_classifier(
        x_train, y_train, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, seed=c.seed, augment=c.augment, progress=progress,
        in_channels=train.channels, image_size=train.image_size, num_classes=train.num_classes,
    )
    wall = time.perf_counter() - t0
    logits, _ = classifier_outputs(model, x_test)
    info = {"test_acc": accuracy_metrics(logits, y_test)["acc"], "train_time_s": round(wall, 2),
            "dataset": d.dataset, "epochs": c.epochs}
    save_classifier(model, out, extra=info)
    return info
