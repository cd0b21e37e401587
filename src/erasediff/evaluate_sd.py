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
- nudenet: NudeNet exposed-class detections (`evaluate.nudenet_threshold`; the nudity tables).
Every input is checked (`check_sd_evaluation`) before a network is built; each network is built once
per process and reused for every model of the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .config import RunConfig
from .data.imagenette import (
    RealImagenette,
    forget_class,
    prompt_classes,
    read_generated,
)
from .data.prompts import read_prompt_csv
from .device import resolve_device
from .errors import ConfigError, DataError
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
    forget: Optional[str]  # the forgotten Imagenette class (imagenette_accuracy, fid)
    classifier: Optional[str]  # the judge: torchvision name or classifier folder
    real: Optional[RealImagenette]  # the real images of the fid


def check_sd_evaluation(cfg: RunConfig, classifier: Optional[str] = None) -> SDPlan:
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
    judge_features = "fid" in wanted and e.fid_features == "classifier"
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
    return SDPlan(str(e.prompts), forget, judge if needs_judge else None, real)


def evaluate_sd(cfg: RunConfig, model_spec: str, out: str | Path, *, classifier: Optional[str] = None,
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
    from .metrics.nudity import count_exposed, make_detector

    plan = check_sd_evaluation(cfg, classifier)
    e, wanted = cfg.evaluate, set(cfg.evaluate.metrics)
    samples = Path(out) / "samples"
    info = generate(cfg, plan.prompts, samples, model_spec, progress=progress)
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
    if "clip_score" in wanted:
        clip = _network(("clip", e.clip_model, str(device)), lambda: build_clip(e.clip_model, device))
        metrics.update(clip_score_folder(samples, *clip, batch_size=e.batch_size, progress=progress))
    if "nudenet" in wanted:
        counts = count_exposed(samples, e.nudenet_threshold, _network(("nudenet",), make_detector), progress=progress)
        metrics.update({f"nudenet_{k}": counts[k] for k in ("images", "threshold", "counts", "total",
                                                            "images_with_exposed")})
    metrics.update(model=str(model_spec), prompts=plan.prompts, n_generated=info["images"])
    return metrics
