"""Evaluation metrics: the digits classifier with the forget-class metrics, and the Fréchet distance."""

from .classifier import (
    DigitsCNN,
    accuracy_metrics,
    classifier_outputs,
    forgetting_metrics,
    load_classifier,
    save_classifier,
    train_classifier,
)
from .fid import extract_features, feature_statistics, frechet_distance

__all__ = [
    "DigitsCNN",
    "accuracy_metrics",
    "classifier_outputs",
    "extract_features",
    "feature_statistics",
    "forgetting_metrics",
    "frechet_distance",
    "load_classifier",
    "save_classifier",
    "train_classifier",
]
