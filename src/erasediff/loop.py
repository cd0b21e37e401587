"""THE training / unlearning loop, method-agnostic (DESIGN.md "Two abstractions").

Pretraining, Retrain, Finetune and every unlearning method are runs of this loop; a method only
decides what one step does (`Method.update`). Around it the loop owns: seeding, data iterators,
optimiser + warm-up schedule, EMA, periodic sample grids, logs, checkpoints and resume.

Two phases keep bad input from leaving anything behind: `prepare` validates the config, loads
the data and the model and sets the method up without writing a byte; `Run.execute` creates the
run directory and trains.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from .backbones import Backbone, build_backbone
from .checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_pretrained,
    save_checkpoint,
)
from .config import RunConfig, config_from_text, dump_config
from .data import InfiniteBatches, LabeledImages, dataset_from_config, forget_remain_split
from .ema import EMA
from .errors import ConfigError, ErasediffError
from .methods import Method, MethodData, TrainState, get_method
from .samplers import sample_classes


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"config key 'device' has an invalid value '{spec}'; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available; valid here: auto, cpu")
    return device


def load_model(backbone: Backbone, cfg: RunConfig) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(model, ema_model or None): random init from `model.arch`, or `model.pretrained`.

    From a run directory the trained weights start from the raw weights and the EMA from the stored
    EMA weights, as SA / EraseDiff do (θ* = states[0], EMA shadow = states[-1]).
    """
    if cfg.model.pretrained is None:
        try:
            return backbone.build_model(), None
        except ValueError as exc:  # the UNet constructors validate their arguments
            raise ConfigError(f"model.arch is invalid: {str(exc).splitlines()[0]}") from None
    raw, ema = resolve_pretrained(cfg.model.pretrained)
    try:
        model = backbone.load_model(raw)
        ema_model = backbone.load_model(ema) if ema else None
    except (OSError, ValueError) as exc:
        raise ErasediffError(
            f"could not load model.pretrained '{cfg.model.pretrained}' (not a local path, so read as a Hugging Face "
            f"Hub id): {str(exc).splitlines()[0]}"
        ) from None
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


def peak_memory_mib(device: torch.device) -> dict[str, Any]:
    """Peak memory of the training steps (PAPER.md Table 2 "Memory"): on CUDA the peak of allocated tensors
    since the loop started (torch.cuda.max_memory_allocated); on CPU the process's peak resident set size
    (everything the process ever held, setup included: an upper bound)."""
    if device.type == "cuda":
        return {"value": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "kind": "cuda_max_allocated"}
    import resource

    return {"value": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "kind": "cpu_peak_rss"}


def _warmup(steps: int):
    return lambda i: min(1.0, (i + 1) / steps) if steps > 0 else 1.0


@dataclass
class Run:
    cfg: RunConfig
    run_dir: Path
    state: TrainState
    method: Method
    data: MethodData
    dataset: LabeledImages
    resume_from: Path | None

    # ----------------------------------------------------------------------------- bookkeeping
    def _states(self) -> dict[str, Any]:
        s = self.state
        rng = {"torch": torch.get_rng_state(), "generator": s.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        states = {
            "model": {n: p for n, p in s.model.state_dict().items()},
            "optimizer": s.optimizer.state_dict(),
            "lr_scheduler": s.lr_scheduler.state_dict(),
            "rng": rng,
            "method": self.method.state_dict(),
            "data": {k: it.state_dict() for k, it in (("forget", self.data.forget), ("remain", self.data.remain)) if it},
        }
        if s.ema is not None:
            states["ema"] = dict(zip(s.param_names, s.ema.shadow))
            states["ema_updates"] = s.ema.num_updates
        return states

    def save(self) -> Path:
        path = checkpoint_path(self.run_dir, self.state.step)
        save_checkpoint(path, step=self.state.step, config_yaml=dump_config(self.cfg), states=self._states())
        prune_checkpoints(self.run_dir, keep=path)
        return path

    def _restore(self, path: Path) -> None:
        step, _, states = load_checkpoint(path)
        s = self.state
        s.model.load_state_dict(states["model"])
        s.optimizer.load_state_dict(states["optimizer"])
        s.lr_scheduler.load_state_dict(states["lr_scheduler"])
        if s.ema is not None:
            s.ema.load_shadow([states["ema"][n] for n in s.param_names])
            s.ema.num_updates = int(states["ema_updates"])
        torch.set_rng_state(states["rng"]["torch"])
        s.generator.set_state(states["rng"]["generator"])
        if "cuda" in states["rng"]:
            torch.cuda.set_rng_state_all(states["rng"]["cuda"])
        for key, it in (("forget", self.data.forget), ("remain", self.data.remain)):
            if it is not None:
                it.load_state_dict(states["data"][key])
        self.method.load_state_dict(states["method"])
        s.step = step

    def sample_grid(self, path: Path) -> Path:
        """One row per class (grid_per_class images each), EMA weights if configured, eval noise."""
        s, cfg = self.state, self.cfg
        classes = list(range(min(self.dataset.num_classes, 10)))
        use_ema = s.ema is not None and cfg.sample.use_ema
        ctx = s.ema.swapped() if use_ema else nullcontext()
        with ctx:  # the backbone samples in its own space (pixels, or latents it decodes)
            images = s.backbone.sample_images(s.model, classes, cfg.sample.grid_per_class, cfg.sample, self.dataset.image_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(make_grid(images, nrow=cfg.sample.grid_per_class, normalize=True, value_range=(-1, 1)), path)
        return path

    def save_models(self) -> None:
        s, text = self.state, dump_config(self.cfg)
        s.model.save_pretrained(self.run_dir / "model")
        (self.run_dir / "model" / "erasediff_config.yaml").write_text(text)
        if s.ema is not None:
            with s.ema.swapped():
                s.model.save_pretrained(self.run_dir / "model_ema")
            (self.run_dir / "model_ema" / "erasediff_config.yaml").write_text(text)

    # -------------------------------------------------------------------------------- the loop
    def step(self) -> dict[str, float]:
        """One outer step: draw the D_f / D_r batches the method uses, update, EMA; returns its logs."""
        s = self.state
        forget = next(self.data.forget) if self.data.forget is not None else None
        remain = next(self.data.remain) if self.data.remain is not None else None
        logs = self.method.update(s, forget, remain)
        if s.ema is not None:
            s.ema.update()
        s.step += 1
        return logs

    def execute(self, progress: bool = True) -> dict[str, Any]:
        cfg, s, t = self.cfg, self.state, self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.resolved.yaml").write_text(dump_config(cfg))
        if self.resume_from is not None:
            self._restore(self.resume_from)
        log_file = (self.run_dir / "log.jsonl").open("a")
        device = s.backbone.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start, t0 = s.step, time.perf_counter()
        last: dict[str, float] = {}
        bar = tqdm(total=t.steps, initial=start, desc=f"{cfg.method.name}", unit="step", disable=not progress)
        s.model.train()
        while s.step < t.steps:
            last = self.step()
            bar.update(1)
            if s.step % t.log_every == 0 or s.step == t.steps:
                log_file.write(json.dumps({"step": s.step, "lr": s.lr_scheduler.get_last_lr()[0], **last}) + "\n")
                log_file.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss_r", "loss_f", "loss", "lambda")})
            if t.sample_every and s.step % t.sample_every == 0 and s.step < t.steps:
                self.sample_grid(self.run_dir / "samples" / f"step_{s.step:07d}.png")
            if t.checkpoint_every and s.step % t.checkpoint_every == 0 and s.step < t.steps:
                self.save()
        bar.close()
        log_file.close()
        wall = time.perf_counter() - t0
        ckpt = self.save()
        self.save_models()
        grid = self.sample_grid(self.run_dir / "samples" / f"step_{s.step:07d}.png")
        summary = {
            "method": cfg.method.name,
            "experiment": cfg.experiment,
            "seed": cfg.seed,
            "steps": s.step,
            "steps_this_session": s.step - start,
            "wall_time_s": round(wall, 2),
            "sec_per_step": round(wall / max(1, s.step - start), 4),
            "peak_memory_mib": peak_memory_mib(device),
            "final_logs": last,
            "checkpoint": str(ckpt),
            "model_dir": str(self.run_dir / "model"),
            "ema_model_dir": str(self.run_dir / "model_ema") if s.ema is not None else None,
            "sample_grid": str(grid),
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def prepare(
    cfg: RunConfig, *, run_dir: Path | None = None, resume: bool = False, require_pretrained: bool = False,
    training_only: bool = False, progress: bool = True, setup_method: bool = True,
) -> Run:
    """Validate and build everything for a run; write nothing. Raises ErasediffError on bad input.

    progress: show the bars of setup work (generated D_r, a method's own sampling).
    setup_method: False builds the model, data and optimiser but leaves `method.setup` (and a generated
    D_r) out: for commands that compute a method's input files (SA's Fisher, SalUn's mask) from the very
    config whose setup would read them.
    """
    method_cls = get_method(cfg.method.name)
    if training_only and not method_cls.training_objective:
        raise ConfigError(
            f"'train' runs a training objective (valid: finetune); method '{cfg.method.name}' is an unlearning "
            "method: use the 'unlearn' command"
        )
    if require_pretrained and cfg.model.pretrained is None:
        raise ConfigError("'unlearn' needs a model to unlearn from: set model.pretrained (a run dir, model dir or Hub id)")
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir()
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            raise ErasediffError(f"nothing to resume: no checkpoint in {run_dir / 'checkpoints'}")
        _, saved_text, _ = load_checkpoint(resume_from)
        saved = config_from_text(saved_text)
        if replace(saved, train=replace(saved.train, steps=cfg.train.steps), device=cfg.device) != cfg:
            raise ConfigError(
                f"--resume: the config differs from the one saved in {resume_from} (only train.steps and device may change); "
                f"see {run_dir / 'config.resolved.yaml'}"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ErasediffError(
            f"run directory {run_dir} already exists: pass --resume to continue it, or choose another "
            "--output-dir or --seed (results are never overwritten)"
        )

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
    return Run(cfg, run_dir, state, method, data, dataset, resume_from)
