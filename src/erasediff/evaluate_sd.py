"""`evaluate` of a stable_diffusion model (docs/evaluation.md "Stable Diffusion metrics").

The images of the prompt CSV `evaluate.prompts` are generated with the config's `generate` section
(`generate.generate`: the same seeds for every model, resumable) into OUT/samples, then the groups of
`evaluate.metrics` score them:
- imagenette_accuracy: the judge's top-1 accuracy per Imagenette class; acc_forget is the class that
  data.forget_prompts names (Table 4 "tench acc");
- fid: the FID of the other classes' images against real Imagenette images (`evaluate.real`, null =
  data.root), in `evaluate.fid_features` space with `evaluate.quirks` (Table 4: inception64 + uint8_cast,
  max_real 1000);
- clip_score: CLIP image-prompt agreement (`evaluate.clip_model`);
- nudenet: NudeNet exposed-class detections (`evaluate.nudenet_threshold`; the nudity tables), also per
  I2P category when the CSV has a `categories` column (nudenet_by_category);
- coco_fid: the FID of ALL generated images (a captions CSV, e.g. COCO-30k) against precomputed statistics
  (`evaluate.reference_stats`, an .npz with mu, sigma) or a folder of real images (`evaluate.real`, e.g.
  COCO val2014, resized + center-cropped to the generated size, statistics cached), in
  `evaluate.fid_features` space (docs/evaluation.md "Utility at scale").
`evaluate.max_prompts` keeps the first rows of the CSV: only they are generated, and every group scores
the images of OUT/samples/manifest.csv, which lists only them.
Why one file over 300 lines: the input check of every group and the scoring share one plan (`SDPlan`),
decided before a network is built; the metrics themselves live in metrics/.
Every input is checked (`check_sd_evaluation`) before a network is built; each network is built once
per process and reused for every model of the call.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .data.imagenette import (
    RealImagenette,
    forget_class,
    image_batches,
    image_size,
    prompt_classes,
    read_generated,
    real_batches,
)
from .data.prompts import MANIFEST, manifest_rows, read_prompt_csv
from .device import resolve_device
from .errors import ConfigError, DataError, ErasediffError
from .evaluate import SD_METRICS, feature_extractor
from .generate import generate, pipeline_of
from .metrics.quirks import EvalQuirks

_NETWORKS: dict[tuple, Any] = {}  # (what, spec, device) -> network, reused across the models of one process


def _network(key: tuple, build: Callable[[], Any]) -> Any:
    if key not in _NETWORKS:
        _NETWORKS[key] = build()
    return _NETWORKS[key]


@dataclass(frozen=True)
class SDPlan:
    """What `check_sd_evaluation` found: the inputs of the groups, decided before anything is built."""

    prompts: str
    forget: str | None  # the forgotten Imagenette class (imagenette_accuracy, fid)
    classifier: str | None  # the judge: torchvision name or classifier folder
    real: RealImagenette | None  # the real images of the fid
    coco_stats: str | None = None  # coco_fid against these precomputed statistics (.npz) ...
    coco_real: str | None = None  # ... or against the images of this folder,
    coco_real_files: tuple[Path, ...] = ()  # these ones (recursive, sorted, the first max_real)
    categories: bool = False  # the prompt CSV has a `categories` column (nudenet_by_category)


def real_image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` (recursive; suffixes of metrics.nudity), sorted by relative path.
    DataError when the folder does not exist or holds no image."""
    from .metrics.nudity import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"evaluate.real '{folder}': no such folder (the real images of coco_fid, e.g. COCO val2014)")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"evaluate.real '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return files


def feature_dims(kind: str, classifier: str | None) -> int | None:
    """The size of the features of `evaluate.fid_features` = kind, known before anything is built (the
    judge folder's classifier.json for kind classifier); None when it cannot be told."""
    if kind in ("inception", "inception64"):
        return 64 if kind == "inception64" else 2048
    from .metrics.classifier import classifier_feature_dim

    try:
        return classifier_feature_dim(classifier)
    except (ErasediffError, OSError, ValueError, TypeError):
        return None


def _has_column(path: str | Path, name: str) -> bool:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return name in (csv.DictReader(f).fieldnames or [])


def _check_coco_reference(cfg: RunConfig, judge: str | None) -> dict[str, Any]:
    """The reference of the coco_fid group: {"coco_stats": .npz} or {"coco_real": folder, "coco_real_files": ...}."""
    from .metrics.fid import load_statistics

    e = cfg.evaluate
    if (e.reference_stats is None) == (e.real is None):
        raise ConfigError(f"the coco_fid group needs exactly one reference, got {'both' if e.real else 'neither'}: "
                          "evaluate.reference_stats (an .npz with mu, sigma, e.g. precomputed MS-COCO val2014 "
                          "statistics) or evaluate.real (a folder of real images, e.g. COCO val2014)")
    if e.real is not None:
        files = real_image_files(e.real)[:e.max_real]
        if len(files) < 2:
            raise DataError(f"evaluate.real '{e.real}' holds {len(files)} image; the FID needs >= 2")
        return {"coco_real": str(e.real), "coco_real_files": tuple(files)}
    mu, _ = load_statistics(e.reference_stats)
    dims = feature_dims(e.fid_features, judge)
    if dims is not None and len(mu) != dims:
        raise ConfigError(f"evaluate.reference_stats {e.reference_stats} holds {len(mu)}-d statistics but "
                          f"evaluate.fid_features {e.fid_features} gives {dims}-d features: the FID needs statistics "
                          "of the same features (pytorch-fid Inception pool_3 = 2048-d: fid_features inception)")
    return {"coco_stats": str(e.reference_stats)}


def check_sd_evaluation(cfg: RunConfig, classifier: str | None = None) -> SDPlan:
    """Check the evaluation of a stable_diffusion config; one-line ConfigError / DataError naming the problem.

    classifier: the command line's --classifier (overrides evaluate.classifier).
    """
    from .metrics.imagenette import check_imagenet_classifier

    e = cfg.evaluate
    wanted = set(e.metrics)
    other = sorted(wanted - set(SD_METRICS))
    if other:
        raise ConfigError(f"evaluate.metrics {other} do not apply to model.backbone stable_diffusion; valid groups: "
                          f"{', '.join(SD_METRICS)}")
    pipeline_of(cfg)
    if e.prompts is None:
        raise ConfigError("evaluate.prompts is required for a stable_diffusion model: the prompt CSV of the evaluation "
                          "images (e.g. StableDiffusion/prompts/imagenette.csv)")
    read_prompt_csv(e.prompts, cfg.generate.seed)
    forget = real = None
    if wanted & {"imagenette_accuracy", "fid"}:
        forget = forget_class(cfg.data.forget_prompts)
        classes = {cls for _, cls in prompt_classes(e.prompts).values()}
        if forget not in classes:
            raise DataError(f"evaluate.prompts {e.prompts} has no prompt of the forget class '{forget}' (its classes: "
                            f"{', '.join(sorted(classes))})")
    judge = classifier or e.classifier
    judge_features = bool(wanted & {"fid", "coco_fid"}) and e.fid_features == "classifier"
    needs_judge = "imagenette_accuracy" in wanted or judge_features
    if needs_judge:
        if judge is None:
            raise ConfigError("evaluation needs a judge: set evaluate.classifier (resnet50, the paper's) or pass "
                              "--classifier")
        if check_imagenet_classifier(judge) != "folder" and judge_features:
            raise ConfigError(f"evaluate.fid_features classifier needs a classifier folder of this project as "
                              f"evaluate.classifier (got the torchvision model '{judge}'); valid: inception, inception64")
    if "fid" in wanted:
        source = e.real or cfg.data.root
        if source is None:
            raise ConfigError("the fid group needs real images: set evaluate.real (imagenette2/train, a folder with a "
                              "manifest.csv, or frgfm/imagenette) or data.root")
        real = RealImagenette(source)
    coco = _check_coco_reference(cfg, judge) if "coco_fid" in wanted else {}
    return SDPlan(str(e.prompts), forget, judge if needs_judge else None, real, **coco,
                  categories=_has_column(e.prompts, "categories"))


def generated_images(samples: Path) -> list[tuple[Path, int]]:
    """(image, case number) of every image listed in samples/manifest.csv (what `generate` wrote: the
    images of the rows asked for, in order)."""
    rows = [(samples / r["path"], int(r["case_number"])) for r in manifest_rows(samples, ("path", "case_number"))]
    missing = [p for p, _ in rows if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} images listed in {samples / MANIFEST} are missing (first: {missing[0]})")
    return rows


class _Files:
    """`real_batches`' source for plain image files: open(path) = the RGB PIL image."""

    @staticmethod
    def open(path: Path):
        from PIL import Image

        with Image.open(path) as img:
            return img.convert("RGB")


def coco_fid(generated: Sequence[Path], extractor: Callable, extractor_id: str, cache_dir, *,
             reference_stats: str | None = None, real: str | None = None, real_files: Sequence[Path] = (),
             batch_size: int = 50, progress: bool = False) -> dict[str, Any]:
    """FID of the images `generated` against precomputed statistics (`reference_stats`, an .npz with mu and
    sigma) or the images `real_files` of the folder `real`: bicubic resize of the short side and center crop
    to the generated size, statistics cached in `cache_dir` under a key naming the folder, the size and the
    count (and the extractor). extractor: images (B, 3, H, W) in [-1, 1] -> (B, D). No image quirks.
    Returns {"coco_fid", "coco_fid_features", "coco_fid_n_generated", "coco_fid_reference", "coco_fid_n_real"
    (None for statistics that do not say), "coco_fid_dims"}.
    """
    from .metrics.fid import (
        drop_shared_constants,
        extract_features,
        feature_statistics,
        fid_from_statistics,
        load_statistics,
        reference_statistics,
    )

    if (reference_stats is None) == (real is None):
        raise ConfigError("coco_fid needs exactly one reference: reference_stats or real")
    if len(generated) < 2:
        raise DataError(f"{len(generated)} generated image; the FID needs >= 2")
    feats = np.concatenate([extract_features(extractor, b, batch_size)  # (N, D)
                            for b in image_batches(list(generated), batch_size, desc="generated", progress=progress)])
    if reference_stats is not None:
        mu_r, sigma_r = load_statistics(reference_stats)
        if len(mu_r) != feats.shape[1]:
            raise ConfigError(f"evaluate.reference_stats {reference_stats} holds {len(mu_r)}-d statistics but the "
                              f"features {extractor_id} are {feats.shape[1]}-d")
        with np.load(reference_stats, allow_pickle=False) as z:
            n_real = int(z["n"]) if "n" in z.files and z["n"].ndim == 0 else None
        reference = f"stats:{Path(reference_stats).resolve()}"
    else:
        if len(real_files) < 2:
            raise DataError(f"{len(real_files)} real image in '{real}'; the FID needs >= 2")
        size = image_size(generated[0])
        reference = f"folder:{Path(real).resolve()}"
        key = f"coco-real/{reference}/size={size[0]}x{size[1]}/n={len(real_files)}"
        n_real = len(real_files)

        def real_images():
            return real_batches(_Files(), list(real_files), size, batch_size, progress=progress)

        mu_r, sigma_r = reference_statistics(key, real_images, extractor, extractor_id, cache_dir, batch_size=batch_size)
    fid = fid_from_statistics(*drop_shared_constants(*feature_statistics(feats), mu_r, sigma_r))
    return {"coco_fid": fid, "coco_fid_features": extractor_id, "coco_fid_n_generated": len(feats),
            "coco_fid_reference": reference, "coco_fid_n_real": n_real, "coco_fid_dims": int(feats.shape[1])}


def evaluate_sd(cfg: RunConfig, model_spec: str, out: str | Path, *, classifier: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Generate the evaluation images of `model_spec` into out/samples and compute `evaluate.metrics`.

    model_spec: a run directory, a UNet folder or Hub id, or the pipeline itself (its own UNet: the
    Unscrubbed SD v1.4). Returns the metrics (keys in docs/evaluation.md "Stable Diffusion metrics").
    """
    from .metrics.clip_score import build_clip, clip_score_folder
    from .metrics.imagenette import (
        imagenet_classifier,
        imagenette_accuracy,
        remaining_fid,
    )
    from .metrics.nudity import count_exposed, exposed_by_category, make_detector

    plan = check_sd_evaluation(cfg, classifier)
    e, wanted = cfg.evaluate, set(cfg.evaluate.metrics)
    samples = Path(out) / "samples"
    info = generate(cfg, plan.prompts, samples, model_spec, progress=progress, max_rows=e.max_prompts)
    generated = generated_images(samples)  # the images of the rows asked for, every group scores these
    device = resolve_device(cfg.device)
    metrics: dict[str, Any] = {}
    items = read_generated(samples, plan.prompts) if wanted & {"imagenette_accuracy", "fid"} else []
    judge = _network(("judge", plan.classifier, str(device)), lambda: imagenet_classifier(plan.classifier, device)) \
        if plan.classifier is not None else None
    if "imagenette_accuracy" in wanted:
        metrics.update(imagenette_accuracy(items, plan.forget, judge, batch_size=e.batch_size, progress=progress))
    if "fid" in wanted:
        extractor, extractor_id, _ = feature_extractor(e.fid_features, judge, plan.classifier, device)
        quirks = EvalQuirks(**{name: True for name in e.quirks})
        metrics.update(remaining_fid(items, plan.forget, plan.real, extractor, extractor_id, quirks, e.fid_cache,
                                     max_real=e.max_real, batch_size=e.batch_size, progress=progress))
    if "coco_fid" in wanted:
        extractor, extractor_id, _ = feature_extractor(e.fid_features, judge, plan.classifier, device)
        metrics.update(coco_fid([p for p, _ in generated], extractor, extractor_id, e.fid_cache,
                                reference_stats=plan.coco_stats, real=plan.coco_real, real_files=plan.coco_real_files,
                                batch_size=e.batch_size, progress=progress))
    if "clip_score" in wanted:
        clip = _network(("clip", e.clip_model, str(device)), lambda: build_clip(e.clip_model, device))
        metrics.update(clip_score_folder(samples, *clip, batch_size=e.batch_size, progress=progress))
    if "nudenet" in wanted:
        counts = count_exposed(samples, e.nudenet_threshold, _network(("nudenet",), make_detector), progress=progress,
                               files=[p for p, _ in generated])
        metrics.update({f"nudenet_{k}": counts[k] for k in ("images", "threshold", "counts", "total",
                                                            "images_with_exposed")})
        if plan.categories:  # I2P: the same counts per category of the prompts
            per_case: dict[int, list[int]] = {}
            for (_, case), hits in zip(generated, counts["per_image"]):
                per_case.setdefault(case, []).append(hits)
            rows = read_prompt_csv(plan.prompts, cfg.generate.seed)[:e.max_prompts]
            metrics["nudenet_by_category"] = exposed_by_category(
                [(r.categories, per_case.get(r.case_number, [])) for r in rows])
    metrics.update(model=str(model_spec), prompts=plan.prompts, n_generated=info["images"])
    return metrics
