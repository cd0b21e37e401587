"""Config -> a built run (model, data, optimiser, EMA, method), writing nothing and needing no run directory.

`build_run` is what `train` (loop.py), `bench`, SA's Fisher and SalUn's mask build their work from;
every check that needs the data or the model (class counts, image sizes, a pretrained model's
weights being finite, a method's input files) fails here, before anything is written.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils.data import TensorDataset

from .backbones import Backbone, build_backbone
from .checkpoint import check_finite_weights, resolve_pretrained
from .config import RunConfig
from .data import (
    InfiniteBatches,
    LabeledImages,
    dataset_from_config,
    forget_remain_split,
)
from .device import resolve_device
from .ema import EMA
from .errors import ConfigError, ErasediffError, first_line
from .methods import Method, MethodData, TrainState, get_method
from .run import Run
from .samplers import sample_classes


def load_model(backbone: Backbone, cfg: RunConfig) -> tuple[torch.nn.Module, torch.nn.Module | None]:
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


def build_data(cfg: RunConfig, method: Method, device: torch.device) -> tuple[LabeledImages, MethodData]:
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
    if method.needs_forget and not d.forget_classes:
        raise ConfigError(f"method '{method.name}' needs a forget set: set data.forget_classes (e.g. [0])")
    forget_idx, remain_idx = forget_remain_split(
        data.labels, d.forget_classes, data.num_classes, forget_ratio=d.forget_ratio, seed=cfg.seed
    )
    forget = remain = None
    if method.needs_forget:
        forget = InfiniteBatches(
            data.dataset, forget_idx, d.forget_batch_size or d.batch_size,
            seed=cfg.seed * 2 + 1, num_workers=d.num_workers, device=device,
        )
    if method.needs_remain and d.remain_source == "real":
        remain = InfiniteBatches(
            data.dataset, remain_idx, d.batch_size, seed=cfg.seed * 2, num_workers=d.num_workers, device=device
        )
    return data, MethodData(forget=forget, remain=remain)


def generated_remain(state: TrainState, num_classes: int, progress: bool = True) -> InfiniteBatches:
    """D_r without access to the training data (data.remain_source: generated, PAPER.md §4.1).

    The model being unlearned (its EMA weights when sample.use_ema, as SA's generative replay) samples
    ceil(remain_generated / |C_r|) images of every remaining class c ∉ C_f with the sample section's
    sampler and evaluation seed; the batches of D_r are drawn from them as from real data. The set is
    a function of the config alone, so a resumed run regenerates the same images.
    """
    cfg = state.cfg
    if not state.backbone.conditional:
        raise ConfigError(
            f"data.remain_source 'generated' samples the remaining classes, which needs a conditional model "
            f"(backbone '{cfg.model.backbone}' is not); valid here: real"
        )
    remaining = [c for c in range(num_classes) if c not in cfg.data.forget_classes]
    per_class = -(-cfg.data.remain_generated // len(remaining))
    size = cfg.data.image_size or cfg.model.arch.sample_size
    shape = (cfg.model.arch.in_channels, size, size)
    ctx = state.ema.swapped() if state.ema is not None and cfg.sample.use_ema else nullcontext()
    with ctx:
        images, labels = sample_classes(state.backbone, state.model, remaining, per_class, shape, cfg.sample, progress=progress)
    return InfiniteBatches(TensorDataset(images, labels), torch.arange(len(labels)), cfg.data.batch_size,
                           seed=cfg.seed * 2, device=state.backbone.device)


def _warmup(steps: int):
    return lambda i: min(1.0, (i + 1) / steps) if steps > 0 else 1.0


def build_run(cfg: RunConfig, *, progress: bool = True, setup_method: bool = True) -> Run:
    """Validate and build everything for a run (model, data, optimiser, method); writes nothing and needs
    no run directory. Raises ErasediffError on bad input.

    progress: show the bars of setup work (generated D_r, a method's own sampling).
    setup_method: False builds the model, data and optimiser but leaves `method.setup` (and a generated
    D_r) out: for commands that compute a method's input files (SA's Fisher, SalUn's mask) from the very
    config whose setup would read them.
    """
    method_cls = get_method(cfg.method.name)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    method = method_cls(cfg.method)  # before the data: which sets it draws may depend on its config
    dataset, data = build_data(cfg, method, device)
    backbone = build_backbone(cfg, device)
    model, ema_model = load_model(backbone, cfg)
    model.to(device).train()
    named = backbone.trainable_parameters(model, cfg.model.trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in named:
        p.requires_grad_(True)
    names, params = [n for n, _ in named], [p for _, p in named]
    t = cfg.train
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(t.warmup_steps))
    ema = None
    if t.ema_decay is not None:
        ema = EMA(params, t.ema_decay, warmup=t.ema_warmup)
        if ema_model is not None:
            shadow = dict(ema_model.named_parameters())
            ema.load_shadow([shadow[n].to(device) for n in names])
        del ema_model
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    state = TrainState(cfg, backbone, model, params, names, optimizer, lr_scheduler, ema, generator, progress=progress)
    if setup_method:
        if method.needs_remain and cfg.data.remain_source == "generated":
            data.remain = generated_remain(state, dataset.num_classes, progress)
        method.setup(state, data)
    return Run(cfg, state, method, data, dataset)
