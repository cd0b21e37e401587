"""Model evaluation (docs/evaluation.md): sample every class on the evaluation noise, then score the images.

For a model and a forget set C_f, images are generated for every class on the evaluation seed's
noise (the same for every model: `samplers.sampling_units`), `evaluate.n_forget` per forgotten and
`evaluate.n_per_class` per remaining class. The metric groups of `evaluate.metrics` then read them:
- classifier: per forgotten class c_f, p_f = mean P(y = c_f | x), entropy_f = mean entropy (nats),
  acc_f = share classified as c_f (averaged over C_f, per class in `per_forget_class`); over the
  remaining classes acc_remain (w.r.t. the class asked for) and fd_remain, the Fréchet distance
  between generated and real remaining-class images in the classifier's feature space;
- per_class_fd: that distance for each class on its own (`fd_class_<c>`, the digits Table 3);
- fid / per_class_fid / precision_recall / inception_score / weight_distance: see EvaluateConfig.
A stable_diffusion model is scored by `evaluate_sd` on the images of a prompt CSV instead (groups
`SD_METRICS`, docs/evaluation.md "Stable Diffusion metrics").
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .backbones import build_backbone
from .checkpoint import load_eval_model
from .config import RunConfig
from .data import dataset_from_config, images_of_classes
from .device import resolve_device
from .errors import ConfigError, ErasediffError
from .metrics import (
    EvalQuirks,
    accuracy_metrics,
    classifier_outputs,
    extract_features,
    feature_statistics,
    fid_from_statistics,
    forgetting_metrics,
    frechet_distance,
    in_distribution_forgetting,
    inception_extractor,
    inception_logits_fn,
    inception_score,
    load_classifier,
    per_class_fid,
    precision_recall,
    reference_key,
    reference_statistics,
    weight_distance,
)
from .samplers import sample_classes

#: what one evaluation gives: metrics, and the images (N, C, H, W) in [-1, 1] with their labels (N,) or None
Scored = tuple[dict[str, Any], torch.Tensor | None, torch.Tensor | None]

#: the metric groups of class-conditional / unconditional models, and of a stable_diffusion model (`evaluate_sd`)
DDPM_METRICS = ("classifier", "per_class_fd", "robust_forgetting", "fid", "per_class_fid", "precision_recall",
                "inception_score", "weight_distance")
SD_METRICS = ("imagenette_accuracy", "fid", "clip_score", "nudenet", "coco_fid")


def classifier_metrics(logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, forget_classes: list[int],
                       real_features: torch.Tensor) -> dict[str, Any]:
    """The `classifier` group (module docstring) from the judge's logits (N, K) and features (N, D) of the
    generated images made for `labels` (N,), and its features of the real remaining-class images."""
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
    out["fd_remain"] = frechet_distance(feats[remain], real_features)
    return out


_REAL_FEATURES: dict[tuple[str, str], torch.Tensor] = {}  # real features, reused across the models of one process
_INCEPTION: dict[tuple[str, str], torch.nn.Module] = {}


def feature_extractor(kind: str, classifier: torch.nn.Module | None, classifier_dir: str | None,
                      device: torch.device):
    """(extractor images [-1, 1] -> (B, D), its id for the statistics cache, logits fn for IS) of
    `evaluate.fid_features` = kind; `classifier` (read from `classifier_dir`) for kind classifier."""
    if kind == "classifier":
        files = sorted(p for p in Path(classifier_dir).iterdir() if p.is_file())
        digest = hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
        return classifier.features, f"classifier-{digest}", classifier
    key = (kind, str(device))
    if key not in _INCEPTION:  # built (and its weights read) once per process, not once per model
        _INCEPTION[key] = inception_extractor(64 if kind == "inception64" else 2048, device)
    net = _INCEPTION[key]
    return net, net.extractor_id, None


def feature_metrics(cfg: RunConfig, wanted: set[str], images: torch.Tensor, labels: torch.Tensor, real,
                    remain_classes: list[int], classifier, classifier_dir, device: torch.device) -> dict[str, Any]:
    """FID (remaining classes pooled), per-class FID, precision/recall and IS in `evaluate.fid_features` space.

    Real statistics come from the cache (`metrics.reference_statistics`, keyed by dataset, split,
    classes, quirks and extractor); precision/recall needs the real features themselves, kept in
    memory for the other models of the same process.
    """
    e = cfg.evaluate
    quirks = EvalQuirks(**{name: True for name in e.quirks}, inception_dims=64 if e.fid_features == "inception64" else 2048)
    extractor, extractor_id, is_logits = feature_extractor(e.fid_features, classifier, classifier_dir, device)
    quirk_tag = f"/quirks={','.join(sorted(e.quirks))}" if e.quirks else ""

    def real_images(classes):
        return lambda: quirks.apply(images_of_classes(real, classes)[0])

    gen = quirks.apply(images)
    out: dict[str, Any] = {"fid_features": extractor_id}
    remain = torch.isin(labels, torch.tensor(remain_classes))
    remain_key = reference_key(real.name, e.real_split, remain_classes) + quirk_tag
    # features of the generated remaining-class images, shared by FID and precision/recall
    gen_feats = extract_features(extractor, gen[remain]) if wanted & {"fid", "precision_recall"} else None
    if "fid" in wanted:
        ref = reference_statistics(remain_key, real_images(remain_classes), extractor, extractor_id, e.fid_cache)
        out["fid"] = fid_from_statistics(*feature_statistics(gen_feats), *ref)
    if "per_class_fid" in wanted:
        classes = list(range(real.num_classes))
        stats = {c: reference_statistics(reference_key(real.name, e.real_split, [c]) + quirk_tag, real_images([c]),
                                         extractor, extractor_id, e.fid_cache) for c in classes}
        out.update(per_class_fid(gen, labels, None, None, classes, extractor, real_statistics=stats))
    if "precision_recall" in wanted:
        memo = (remain_key, extractor_id)
        if memo not in _REAL_FEATURES:
            _REAL_FEATURES[memo] = torch.from_numpy(extract_features(extractor, real_images(remain_classes)()))
        pr = precision_recall(_REAL_FEATURES[memo], torch.from_numpy(gen_feats), k=3)
        out.update(quirks.apply_metrics({k: pr[k] for k in ("precision", "recall")}))
    if "inception_score" in wanted:
        scored = real_images(remain_classes)() if quirks.is_on_reference else gen[remain]
        logits_fn = is_logits if is_logits is not None else inception_logits_fn(device)
        out.update({k: v for k, v in inception_score(scored, logits_fn=logits_fn).items() if k in ("is_mean", "is_std")})
    return out


def sample_counts(cfg: RunConfig, num_classes: int) -> dict[int, int]:
    """{class: images to generate}: evaluate.n_forget for C_f (default n_per_class), n_per_class otherwise."""
    e, forget = cfg.evaluate, set(cfg.data.forget_classes)
    return {c: (e.n_forget or e.n_per_class) if c in forget else e.n_per_class for c in range(num_classes)}


def per_class_fd(features: torch.Tensor, labels: torch.Tensor, real_features: torch.Tensor, real_labels: torch.Tensor,
                 classes: list[int], prefix: str) -> dict[str, float]:
    """{f"{prefix}_class_<c>": Fréchet distance of class c's generated vs real features} for c in classes."""
    return {f"{prefix}_class_{c}": frechet_distance(features[labels == c], real_features[real_labels == c]) for c in classes}


def robust_forgetting(classifier, logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                      real_feats: torch.Tensor, real_labels: torch.Tensor, held_out, forget: list[int],
                      device: torch.device) -> dict[str, float]:
    """The noise-proof forgetting measures of every forgotten class c (metrics.in_distribution): p_f_in_dist
    (judged as c and inside the real class, threshold from the held-out split), in_dist_f and fd_f (the
    Fréchet distance of c's generated images to its real ones in the judge's features); the mean over the
    forgotten classes, and `<key>_class_<c>` when there are several."""
    per: dict[int, dict[str, float]] = {}
    for c in forget:
        _, held_feats = classifier_outputs(classifier, images_of_classes(held_out, [c])[0].to(device))
        gen, ref = labels == c, real_labels == c
        per[c] = in_distribution_forgetting(logits[gen], feats[gen], c, real_feats[ref], held_feats)
        per[c]["fd_f"] = frechet_distance(feats[gen], real_feats[ref])
    out = {k: sum(m[k] for m in per.values()) / len(per) for k in ("p_f_in_dist", "in_dist_f", "fd_f")}
    if len(forget) > 1:
        out.update({f"{k}_class_{c}": m[k] for c, m in per.items() for k in ("p_f_in_dist", "in_dist_f", "fd_f")})
    return out


def evaluate(
    cfg: RunConfig, model_spec: str, *, classifier_dir: str | None = None, progress: bool = True,
    device: torch.device | None = None, samples_dir: str | Path | None = None, reference: str | None = None,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Generate images of every class with `model_spec` and compute `evaluate.metrics`.

    samples_dir: sample through this folder (PNG files, resumable, sharded: `sample_folders.sample_to_folder`)
    instead of in memory. reference: the model weight_distance compares to (Retrain).
    Returns (metrics, images (N, C, H, W) in [-1, 1], labels (N,)). Raises before sampling on bad input.
    """
    e, forget = cfg.evaluate, list(cfg.data.forget_classes)
    wanted = set(e.metrics)
    sd_only = sorted(wanted & set(SD_METRICS) - {"fid"})
    if cfg.model.backbone == "stable_diffusion" or sd_only:
        raise ConfigError(f"evaluate.metrics {sd_only} apply to model.backbone stable_diffusion only; valid here: "
                          f"{', '.join(DDPM_METRICS)}" if sd_only else
                          "a stable_diffusion model is evaluated on a prompt CSV by `evaluate_sd.evaluate_sd`")
    classifier_dir = classifier_dir or e.classifier
    needs_classifier = bool(wanted & {"classifier", "per_class_fd", "robust_forgetting"}) or (
        bool(wanted & {"fid", "per_class_fid", "precision_recall", "inception_score"}) and e.fid_features == "classifier")
    if needs_classifier and classifier_dir is None:
        raise ConfigError("evaluation needs a classifier: set evaluate.classifier or pass --classifier DIR")
    if wanted & {"classifier", "robust_forgetting"} and not forget:
        raise ConfigError("evaluation needs the forgotten classes: set data.forget_classes (e.g. [0])")
    if "weight_distance" in wanted and reference is None:
        raise ConfigError("evaluate.metrics has weight_distance: pass --reference RUN (the Retrain model)")
    device = device or resolve_device(cfg.device)
    classifier = load_classifier(classifier_dir).to(device) if needs_classifier else None
    real = dataset_from_config(cfg.data, e.real_split, hflip=False)
    bad = [c for c in forget if not 0 <= c < real.num_classes]
    if bad:
        raise ConfigError(f"data.forget_classes {bad} out of range: valid classes are 0..{real.num_classes - 1}")
    remain_classes = [c for c in range(real.num_classes) if c not in forget]
    counts = sample_counts(cfg, real.num_classes)
    backbone = build_backbone(cfg, device)
    if samples_dir is not None:
        from .sample_folders import read_samples, sample_to_folder

        sample_to_folder(cfg, model_spec, samples_dir, counts, progress=progress)
        images, labels = read_samples(samples_dir, counts, real.channels)
    else:
        model = load_eval_model(backbone, model_spec, cfg.sample.use_ema, cfg.model)
        shape = backbone.sample_shape
        groups: dict[int, list[int]] = {}  # classes with the same count share one call (and one progress bar)
        for c, n in counts.items():
            groups.setdefault(n, []).append(c)
        parts = [sample_classes(backbone, model, cs, n, shape, cfg.sample, progress=progress) for n, cs in groups.items()]
        images, labels = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    metrics: dict[str, Any] = {}
    if classifier is not None:
        logits, feats = classifier_outputs(classifier, images.to(device))
        labels_d = labels.to(device)
        all_real, all_real_labels = images_of_classes(real, list(range(real.num_classes)))
        _, real_feats = classifier_outputs(classifier, all_real.to(device))
        real_labels_d = all_real_labels.to(device)
        if "classifier" in wanted:
            remain_real = torch.isin(real_labels_d, torch.tensor(remain_classes, device=device))
            metrics.update(classifier_metrics(logits, feats, labels_d, forget, real_feats[remain_real]))
        if "per_class_fd" in wanted:
            metrics.update(per_class_fd(feats, labels_d, real_feats, real_labels_d, list(range(real.num_classes)), "fd"))
        if "robust_forgetting" in wanted:
            held = dataset_from_config(cfg.data, "test" if e.real_split == "train" else "train", hflip=False)
            metrics.update(robust_forgetting(classifier, logits, feats, labels_d, real_feats, real_labels_d, held,
                                             forget, device))
    fid_family = wanted & {"fid", "per_class_fid", "precision_recall", "inception_score"}
    if fid_family:
        metrics.update(feature_metrics(cfg, fid_family, images, labels, real, remain_classes, classifier,
                                       classifier_dir, device))
    if "weight_distance" in wanted:
        model = load_eval_model(backbone, model_spec, cfg.sample.use_ema, cfg.model)
        metrics.update(weight_distance(model, load_eval_model(backbone, reference, cfg.sample.use_ema)))
        metrics["reference"] = str(reference)
    metrics["n_per_class"] = e.n_per_class
    metrics["n_forget"] = e.n_forget or e.n_per_class
    metrics["model"] = str(model_spec)
    return metrics, images, labels


def evaluate_to_folder(cfg: RunConfig, out: Path, score: Callable[[], Scored]) -> Scored:
    """Run `score` (an evaluation of one model: metrics and, for a pixel model, its images and labels)
    into the folder `out`, claimed for the duration, and write metrics.json, config.resolved.yaml and,
    when images came back, grid.png (the first sample.grid_per_class images of every class). Refuses a
    folder that already holds metrics.json (results are never overwritten). Returns what `score` did."""
    from .config import dump_config
    from .files import atomic_write_text, write_json
    from .rundir import FolderClaim

    with FolderClaim(out, "evaluation folder"):  # one evaluation per folder at a time
        if (out / "metrics.json").exists():
            raise ErasediffError(f"{out / 'metrics.json'} already exists (results are never overwritten): "
                                 "choose another --output-dir")
        metrics, images, labels = scored = score()
        if images is not None:
            per_row = cfg.sample.grid_per_class
            save_rows_png(out / "grid.png", [class_rows(images, labels, per_row)], per_row)
        atomic_write_text(out / "config.resolved.yaml", dump_config(cfg))
        write_json(out / "metrics.json", metrics)
    return scored


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
