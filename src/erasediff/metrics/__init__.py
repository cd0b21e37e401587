"""Evaluation metrics (docs/evaluation.md), each `fn(...) -> dict` unless it is a building block.

- classifier: the evaluation classifiers (digits CNN; SA's CIFAR10 ResNet34) and the forget-class
  metrics p_f / entropy_f / acc_f and per-class accuracy from their logits;
- fid: FID on features or cached reference statistics, per-class FID (Table 3), with the feature
  extractor as an argument (pytorch-fid's Inception-v3, or a classifier's features offline);
- precision_recall: improved precision/recall (Kynkäänniemi et al. 2019, k = 3);
- inception_score: Inception Score;
- weights: weight distance to the Retrain model (Table 3 "WD");
- quirks: the peers' evaluation quirks as named options (standard behaviour by default);
- Stable Diffusion (imported by their module, their networks are optional downloads): imagenette
  (Table 4 class accuracy and remaining-class FID), clip_score, nudity (NudeNet counts).
"""

from .classifier import (
    ARCHS,
    DigitsCNN,
    ResNetClassifier,
    accuracy_metrics,
    build_classifier,
    classifier_outputs,
    forgetting_metrics,
    load_classifier,
    save_classifier,
    train_classifier,
)
from .fid import (
    INCEPTION_DIMS,
    InceptionFeatures,
    drop_shared_constants,
    extract_features,
    feature_statistics,
    fid_from_statistics,
    frechet_distance,
    inception_extractor,
    per_class_fid,
    reference_key,
    reference_statistics,
    reference_statistics_path,
)
from .in_distribution import in_distribution_forgetting
from .inception_score import (
    InceptionLogits,
    inception_logits_fn,
    inception_score,
    inception_score_from_logits,
)
from .precision_recall import knn_radii, precision_recall
from .quirks import EvalQuirks, bgr, minmax_stretch, swap_precision_recall, uint8_cast
from .weights import weight_distance

__all__ = [
    "ARCHS",
    "DigitsCNN",
    "EvalQuirks",
    "INCEPTION_DIMS",
    "InceptionFeatures",
    "InceptionLogits",
    "ResNetClassifier",
    "accuracy_metrics",
    "bgr",
    "build_classifier",
    "classifier_outputs",
    "drop_shared_constants",
    "extract_features",
    "feature_statistics",
    "fid_from_statistics",
    "forgetting_metrics",
    "frechet_distance",
    "in_distribution_forgetting",
    "inception_extractor",
    "inception_logits_fn",
    "inception_score",
    "inception_score_from_logits",
    "knn_radii",
    "load_classifier",
    "minmax_stretch",
    "per_class_fid",
    "precision_recall",
    "reference_key",
    "reference_statistics",
    "reference_statistics_path",
    "save_classifier",
    "swap_precision_recall",
    "train_classifier",
    "uint8_cast",
    "weight_distance",
]
