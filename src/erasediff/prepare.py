"""What a run and a method's precomputed artifacts start from: the config's data and model, built without a method.

`build.build_run` (every run) and the artifacts a method declares (SA's Fisher, SalUn's saliency mask:
`Method.artifacts`, docs/architecture.md) build their model and batches with these functions, so an
artifact sees exactly the model, the weights and the batches the run that reads it will see. This
module imports no method: the method modules may import it (downward), `build` wraps it for runs.
Nothing here writes a file.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import Backbone, build_backbone
from .checkpoint import check_finite_weights, resolve_pretrained
from .config import RunConfig
from .data import (
    InfiniteBatches,
    LabeledImages,
    dataset_from_config,
    forget_remain_split,
)
from .ema import EMA
from .errors import ConfigError, ErasediffError, first_line
from .samplers import sample_classes
from .speed import apply_speed_options


def load_model(backbone: Backbone, cfg: RunConfig) -> tuple[nn.Module, nn.Module | None]:
    """(model, ema_model or None): random init from `model.arch`, or `model.pretrained`.

    From a run directory the trained weights start from the raw weights and the EMA from the stored
    EMA weights, as SA / EraseDiff do (θ* = states[0], EMA shadow = states[-1]).
    """
    if cfg.model.pretrained is None:
        try:
            return backbone.build_model(), None
        except ValueError as exc:  # the UNet constructors validate their arguments
            raise ConfigError(f"model.arch is invalid: {first_line(exc)}") from None
    raw, ema = resolve_pretrained(cfg.model.pretrained)
    try:
        model = backbone.load_model(raw)
        ema_model = backbone.load_model(ema) if ema else None
    except (OSError, ValueError) as exc:
        raise ErasediffError(
            f"could not load model.pretrained '{cfg.model.pretrained}' (not a local path, so read as a Hugging Face "
            f"Hub id): {first_line(exc)}"
        ) from None
    for m in (model, ema_model):
        if m is not None:
            check_finite_weights(m, f"model.pretrained '{cfg.model.pretrained}'")
    return model, ema_model


@dataclass
class ModelParts:
    """The model a run starts from: `params` are the `model.trainable` parameters (requires_grad, the
    rest frozen), in `param_names` order; `ema` holds their EMA shadow when train.ema_decay is set."""

    backbone: Backbone
    model: nn.Module
    param_names: list[str]
    params: list[nn.Parameter]
    ema: EMA | None


def prepare_model(cfg: RunConfig, device: torch.device) -> ModelParts:
    """Backbone and model of `cfg` on `device` in train mode, trainable parameters selected, EMA shadow
    from the pretrained EMA weights when there are some (else a copy of the weights)."""
    backbone = build_backbone(cfg, device)
    model, ema_model = load_model(backbone, cfg)
    model.to(device).train()
    apply_speed_options(model, cfg.model)
    named = backbone.trainable_parameters(model, cfg.model.trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in named:
        p.requires_grad_(True)
    names, params = [n for n, _ in named], [p for _, p in named]
    t, ema = cfg.train, None
    if t.ema_decay is not None:
        ema = EMA(params, t.ema_decay, warmup=t.ema_warmup)
        if ema_model is not None:
            shadow = dict(ema_model.named_parameters())
            ema.load_shadow([shadow[n].to(device) for n in names])
    return ModelParts(backbone, model, names, params, ema)


def prepare_data(
    cfg: RunConfig, device: torch.device, *, forget: bool, remain: bool, part: tuple[int, int] = (0, 1)
) -> tuple[LabeledImages, InfiniteBatches | None, InfiniteBatches | None]:
    """(dataset, D_f batches, D_r batches) of `cfg`: the endless iterators of the loop, None where not asked for
    (`remain` gives real D_r batches only under data.remain_source real; generated D_r is `build`'s).

    Checks the dataset against the model (class count, image size) and that a forget set exists when
    `forget` batches are asked for. D_f is drawn with seed 2·seed + 1, D_r with 2·seed (one stream each);
    `part` = (r, N): process r of N data-parallel processes gets its share of every batch.
    """
    d = cfg.data
    data = dataset_from_config(d, "train")
    arch = cfg.model.arch
    if data.num_classes != arch.num_classes and cfg.model.backbone == "class_cond":
        raise ConfigError(
            f"dataset '{d.dataset}' has {data.num_classes} classes but model.arch.num_classes is {arch.num_classes}"
        )
    if (data.channels, data.image_size) != (arch.in_channels, arch.sample_size) and cfg.model.pretrained is None:
        raise ConfigError(
            f"dataset '{d.dataset}' gives {data.channels}x{data.image_size}px images but model.arch expects "
            f"{arch.in_channels}x{arch.sample_size}px (set data.image_size or model.arch)"
        )
    if forget and not d.forget_classes:
        raise ConfigError(f"method '{cfg.method.name}' needs a forget set: set data.forget_classes (e.g. [0])")
    forget_idx, remain_idx = forget_remain_split(
        data.labels, d.forget_classes, data.num_classes, forget_ratio=d.forget_ratio, seed=cfg.seed
    )
    forget_batches = remain_batches = None
    if forget:
        forget_batches = InfiniteBatches(
            data.dataset, forget_idx, d.forget_batch_size or d.batch_size,
            seed=cfg.seed * 2 + 1, num_workers=d.num_workers, device=device, part=part,
        )
    if remain and d.remain_source == "real":
        remain_batches = InfiniteBatches(
            data.dataset, remain_idx, d.batch_size, seed=cfg.seed * 2, num_workers=d.num_workers, device=device,
            part=part,
        )
    return data, forget_batches, remain_batches


def sample_as_configured(cfg: RunConfig, backbone: Backbone, model: nn.Module, ema: EMA | None, classes: list[int],
                         n_per_class: int, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_per_class` samples of each class with the config's sampler and evaluation seed (`sample`), from
    the EMA weights when there is an `ema` and sample.use_ema (the generated D_r of the "no access to
    D_r" setting, SA's replay and Fisher samples: docs/baselines.md).

    Returns (images (N, C, H, W) in [-1, 1] on the CPU, labels (N,) int64).
    """
    with ema.swapped() if ema is not None and cfg.sample.use_ema else nullcontext():
        return sample_classes(backbone, model, classes, n_per_class, backbone.sample_shape, cfg.sample, progress)
