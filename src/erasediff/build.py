"""Config -> a built run (model, data, optimiser, EMA, method), writing nothing and needing no run directory.

`build_run` is what `train` (loop.py) and `bench` build their work from; every check that needs the
data or the model (class counts, image sizes, a pretrained model's weights being finite, a method's
declared artifacts being there: `Method.check_artifacts`) fails here, before anything is written. The
model and batches come from `prepare` (shared with the artifacts' own computations).
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from .config import RunConfig
from .data import InfiniteBatches, LabeledImages
from .distributed import Processes, processes
from .errors import ConfigError
from .shard import ShardedGenerator
from .methods import Method, MethodData, TrainState, get_method
from .prepare import ModelParts, prepare_data, prepare_model, sample_as_configured
from .run import Run


def build_data(cfg: RunConfig, method: Method, procs: Processes) -> tuple[LabeledImages, MethodData]:
    """The dataset and this process's share of the batches `method` draws (its needs_forget /
    needs_remain), as `prepare_data`."""
    dataset, forget, remain = prepare_data(cfg, procs.device, forget=method.needs_forget, remain=method.needs_remain,
                                           part=(procs.rank, procs.world))
    return dataset, MethodData(forget=forget, remain=remain)


def generated_remain(cfg: RunConfig, parts: ModelParts, num_classes: int, progress: bool = True,
                     part: tuple[int, int] = (0, 1)) -> InfiniteBatches:
    """D_r without access to the training data (data.remain_source: generated; docs/experiments.md, Table 1 GR).

    The model being unlearned (its EMA weights when sample.use_ema, as SA's generative replay) samples
    ceil(remain_generated / |C_r|) images of every remaining class c ∉ C_f with the sample section's
    sampler and evaluation seed; the batches of D_r are drawn from them as from real data. The set is
    a function of the config alone, so a resumed run regenerates the same images, and every
    data-parallel process the same set (of which it draws its `part` of each batch).
    """
    if not parts.backbone.conditional:
        raise ConfigError(
            f"data.remain_source 'generated' samples the remaining classes, which needs a conditional model "
            f"(backbone '{cfg.model.backbone}' is not); valid here: real"
        )
    remaining = [c for c in range(num_classes) if c not in cfg.data.forget_classes]
    per_class = -(-cfg.data.remain_generated // len(remaining))
    images, labels = sample_as_configured(cfg, parts.backbone, parts.model, parts.ema, remaining, per_class, progress)
    return InfiniteBatches(TensorDataset(images, labels), torch.arange(len(labels)), cfg.data.batch_size,
                           seed=cfg.seed * 2, device=parts.backbone.device, part=part)


def _warmup(steps: int):
    return lambda i: min(1.0, (i + 1) / steps) if steps > 0 else 1.0


def check_micro_batches(cfg: RunConfig, data: MethodData) -> None:
    """ConfigError unless this process's batches split into train.grad_accum_steps equal micro-batches."""
    k = cfg.train.grad_accum_steps
    for name, it in (("forget", data.forget), ("remain", data.remain)):
        if it is not None and it.local_batch_size % k:
            world = it.world
            raise ConfigError(
                f"the {name} batch of {it.batch_size} images{f' over {world} processes' if world > 1 else ''} does not "
                f"split into train.grad_accum_steps={k} equal micro-batches: choose batch sizes divisible by "
                f"{k * world}")


def build_run(cfg: RunConfig, *, progress: bool = True, procs: Processes | None = None) -> Run:
    """Validate and build everything for a run (model, data, optimiser, method); writes nothing and needs
    no run directory. Raises ErasediffError on bad input.

    The method's declared artifacts (SA's Fisher, SalUn's mask, BlindSpot's proxy) must be there, at the
    paths of its config keys (`unlearn` resolves unset ones to the artifacts folder first).
    progress: show the bars of setup work (generated D_r, a method's own sampling).
    procs: this command's processes (default: `distributed.processes(cfg.device)`); each builds the same
    model and draws its share of every batch (docs/distributed.md).
    """
    method_cls = get_method(cfg.method.name)
    method_cls.check_artifacts(cfg)
    procs = procs if procs is not None else processes(cfg.device)
    device = procs.device
    torch.manual_seed(cfg.seed)
    method = method_cls(cfg.method)  # before the data: which sets it draws may depend on its config
    dataset, data = build_data(cfg, method, procs)
    parts = prepare_model(cfg, device)
    # the same start on every process (a random init is seeded alike; this guards against nondeterministic ones)
    procs.broadcast_([p.data for p in parts.params] + (parts.ema.shadow if parts.ema is not None else []))
    t = cfg.train
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(parts.params, lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay,
                        **({"fused": True} if t.fused_optimizer else {}))
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(t.warmup_steps))
    generator = ShardedGenerator(device, procs.rank, procs.world).manual_seed(cfg.seed)  # shard.py
    scaler = torch.amp.GradScaler(device.type) if t.mixed_precision == "fp16" else None
    state = TrainState(cfg, parts.backbone, parts.model, parts.params, parts.param_names, optimizer, lr_scheduler,
                       parts.ema, generator, progress=progress and procs.is_main, procs=procs, scaler=scaler)
    if method.needs_remain and cfg.data.remain_source == "generated":
        data.remain = generated_remain(cfg, parts, dataset.num_classes, progress and procs.is_main,
                                       (procs.rank, procs.world))
    method.setup(state, data)
    check_micro_batches(cfg, data)
    return Run(cfg, state, method, data, dataset)
