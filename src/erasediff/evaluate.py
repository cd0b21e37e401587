"""Model evaluation with a classifier (PAPER.md §5 "Forget-class classifier metrics").

For a model and a forget set C_f, images are generated for every class on the evaluation seed's
noise (the same for every model), then the classifier gives, per forgotten class c_f:
p_f = mean P(y = c_f | x), entropy_f = mean entropy (nats), acc_f = share classified as c_f; and over
the remaining classes: acc_remain (classifier accuracy w.r.t. the class asked for) and fd_remain, the
Fréchet distance between generated and real remaining-class images in the classifier's feature space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .backbones import Backbone, build_backbone
from .checkpoint import resolve_pretrained
from .config import RunConfig
from .data import dataset_from_config, images_of_classes
from .errors import ConfigError, ErasediffError
from .metrics import accuracy_metrics, classifier_outputs, forgetting_metrics, frechet_distance, load_classifier
from .samplers import sample_classes


def load_eval_model(backbone: Backbone, spec: str, use_ema: bool) -> torch.nn.Module:
    """The model to sample from: EMA weights of a run directory when `use_ema` and available."""
    raw, ema = resolve_pretrained(spec)
    path = ema if (use_ema and ema is not None) else raw
    try:
        model = backbone.load_model(path)
    except (OSError, ValueError) as exc:
        raise ErasediffError(f"could not load model '{spec}': {str(exc).splitlines()[0]}") from None
    return model.to(backbone.device).eval()


def generate_for_eval(
    cfg: RunConfig, backbone: Backbone, model: torch.nn.Module, num_classes: int, shape: tuple[int, ...],
    n_per_class: int, progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    return sample_classes(backbone, model, list(range(num_classes)), n_per_class, shape, cfg.sample, progress=progress)


def classifier_metrics(
    classifier: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    forget_classes: list[int],
    real_remain: torch.Tensor,
    real_features: Any = None,
) -> dict[str, Any]:
    """Metrics of generated `images` (N,C,H,W) in [-1,1] made for `labels` (N,) (see module docstring)."""
    logits, feats = classifier_outputs(classifier, images)
    out: dict[str, Any] = {}
    per_class = {str(c): forgetting_metrics(logits[labels == c], c) for c in forget_classes}
    for key in ("p_f", "entropy_f", "acc_f"):
        out[key] = sum(m[key] for m in per_class.values()) / len(per_class)
    if len(forget_classes) > 1:
        out["per_forget_class"] = per_class
    remain = ~torch.isin(labels, torch.tensor(forget_classes, dtype=labels.dtype))
    acc = accuracy_metrics(logits[remain], labels[remain])
    out["acc_remain"] = acc["acc"]
    out["acc_remain_per_class"] = acc["per_class"]
    if real_features is None:
        _, real_features = classifier_outputs(classifier, real_remain)
    out["fd_remain"] = frechet_distance(feats[remain], real_features)
    return out


def evaluate(
    cfg: RunConfig, model_spec: str, *, classifier_dir: str | None = None, progress: bool = True,
    device: torch.device | None = None,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Sample `evaluate.n_per_class` images per class from `model_spec` and score them.

    Returns (metrics, images, labels). Raises before sampling if the classifier or the model is missing.
    """
    from .loop import resolve_device

    classifier_dir = classifier_dir or cfg.evaluate.classifier
    if classifier_dir is None:
        raise ConfigError("evaluation needs a classifier: set evaluate.classifier or pass --classifier DIR")
    forget = list(cfg.data.forget_classes)
    if not forget:
        raise ConfigError("evaluation needs the forgotten classes: set data.forget_classes (e.g. [0])")
    device = device or resolve_device(cfg.device)
    classifier = load_classifier(classifier_dir).to(device)
    d = cfg.data
    real = dataset_from_config(d, cfg.evaluate.real_split, hflip=False)
    bad = [c for c in forget if not 0 <= c < real.num_classes]
    if bad:
        raise ConfigError(f"data.forget_classes {bad} out of range: valid classes are 0..{real.num_classes - 1}")
    remain_classes = [c for c in range(real.num_classes) if c not in forget]
    real_remain, _ = images_of_classes(real, remain_classes)
    backbone = build_backbone(cfg, device)
    model = load_eval_model(backbone, model_spec, cfg.sample.use_ema)
    shape = (real.channels, real.image_size, real.image_size)
    images, labels = generate_for_eval(cfg, backbone, model, real.num_classes, shape, cfg.evaluate.n_per_class, progress)
    metrics = classifier_metrics(classifier, images.to(device), labels.to(device), forget, real_remain.to(device))
    metrics["n_per_class"] = cfg.evaluate.n_per_class
    metrics["model"] = str(model_spec)
    return metrics, images, labels


def class_rows(images: torch.Tensor, labels: torch.Tensor, per_row: int) -> torch.Tensor:
    """The first `per_row` images of every class, class by class: (K·per_row, C, H, W) for a grid."""
    rows = [images[labels == c][:per_row] for c in labels.unique(sorted=True).tolist()]
    return torch.cat(rows)


def save_rows_png(path: Path, panels: list[torch.Tensor], per_row: int, scale: int = 4) -> Path:
    """Save panels (each K·per_row images, one row per class) side by side, upscaled ×`scale`."""
    from torchvision.utils import make_grid, save_image

    grids = [make_grid(p, nrow=per_row, normalize=True, value_range=(-1, 1), pad_value=1.0) for p in panels]
    sep = torch.ones(grids[0].shape[0], grids[0].shape[1], 4)
    parts = [g for pair in zip(grids, [sep] * len(grids)) for g in pair][:-1]
    grid = torch.cat(parts, dim=2)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path
