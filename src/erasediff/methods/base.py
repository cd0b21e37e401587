"""The method interface (docs/architecture.md) and the state the loop hands to a method.

A method is one small class with its own config dataclass, registered by name:
- `setup(state, data)` once before the first step (e.g. keep the forget iterator for inner loops);
- `loss(state, forget, remain) -> (total, parts)` for methods with one objective per step;
- `update(state, forget, remain) -> logs`, by default zero_grad, loss, backward, clip, step;
  EraseDiff overrides it for its inner/outer structure;
- `state_dict()` / `load_state_dict()` for resume (tensors allowed anywhere in the nested dict);
- `artifacts`: the files and runs it reads at setup (SA's Fisher, SalUn's mask, BlindSpot's proxy),
  each an `Artifact` whose path is a method config key, made beforehand by the `precompute` command.
A method never tests which dataset or model family it runs on: it asks the backbone adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from .. import shard
from ..checkpoint import load_param_file
from ..config import RunConfig
from ..device import precision_context
from ..distributed import Processes
from ..ema import EMA
from ..errors import ConfigError, ErasediffError, NonFiniteStep
from ..shard import micro_batch

if TYPE_CHECKING:  # keep config validation free of the diffusers import (seconds)
    from ..backbones.base import Backbone


@dataclass
class TrainState:
    """Everything a step may touch. `params` are the trainable parameters (model.trainable).

    The step's gradient path (docs/distributed.md, "What one step does"): `backward` (fp16: the scaled
    loss), `finish_gradients` (average over the data-parallel processes, fp16 unscale, finite check),
    `clip_and_step` (clip, optimiser and LR-schedule step). `accumulate` runs a method's one-loss
    objective over train.grad_accum_steps micro-batches. With one process in float32 each of these is
    exactly the plain torch call.
    """

    cfg: RunConfig
    backbone: "Backbone"
    model: nn.Module
    params: list[nn.Parameter]
    param_names: list[str]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    generator: torch.Generator  # noise, timesteps and label dropout of the training steps (shard.ShardedGenerator)
    step: int = 0
    progress: bool = True  # show the bars of setup work (a method's own sampling), as build_run(progress=)
    procs: Processes = field(default_factory=Processes)
    scaler: torch.amp.GradScaler | None = None  # train.mixed_precision fp16 only

    # ------------------------------------------------------------------------ gradients of a step
    def autocast(self):
        """The training forwards' autocast context (train.mixed_precision; a no-op for `no`)."""
        return precision_context(self.cfg.train.mixed_precision, self.backbone.device)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), of the fp16-scaled loss under train.mixed_precision fp16; outside autocast."""
        with torch.autocast(self.backbone.device.type, enabled=False):
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def grad(self, loss: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """∇loss w.r.t. `params` (torch.autograd.grad; zeros where unused), local to this process and
        fp16-scaled like `backward`: average with `procs.mean_` before use."""
        with torch.autocast(self.backbone.device.type, enabled=False):
            scaled = self.scaler.scale(loss) if self.scaler is not None else loss
            grads = torch.autograd.grad(scaled, self.params, retain_graph=retain_graph, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]

    def finish_gradients(self, parts: dict[str, float] | None = None, *, synced: bool = False,
                         optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
        """Make the `.grad`s the step's global gradients and check them; returns their L2 norm (0-dim).

        Averages the trainable gradients over the processes (unless `synced`: the caller wrote global
        ones) and the numbers in `parts` (in place: the caller logs the global losses); under fp16
        unscales them for `optimizer` (default: the run's). Raises NonFiniteStep (before any optimiser
        step; the loop's train.nonfinite policy decides) when a loss in `parts` or the norm is NaN or
        infinite, except an fp16 overflow of the gradients alone, which the scaler skips.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        if parts is not None:
            parts.update(self.procs.mean_values(parts))
        if not synced:
            self.procs.mean_(grads)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer or self.optimizer)
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        values = {**(parts or {}), "grad_norm": float(norm)}
        if not all(math.isfinite(v) for v in values.values()):
            if self.scaler is None or not all(math.isfinite(v) for v in (parts or {}).values()):
                raise NonFiniteStep(values)
        return norm

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        """One step of `optimizer` (the fp16 scaler's step and update); False when fp16 skipped it."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped

    def clip_and_step(self, after_clip: Callable[[], None] | None = None,
                      parts: dict[str, float] | None = None, *, synced: bool = False) -> float:
        """`finish_gradients(parts, synced=synced)`, clip the norm to train.grad_clip, call `after_clip`
        (e.g. SalUn's gradient mask), then one optimiser + LR-schedule step. Returns the pre-clip norm;
        an fp16 overflow skips the step and sets parts["amp_skipped"] = 1."""
        norm = self.finish_gradients(parts, synced=synced)
        if not math.isfinite(float(norm)):  # fp16 overflow (finish_gradients raised for anything else)
            self.optimizer_step(self.optimizer)  # the scaler skips it and lowers its scale
            if parts is not None:
                parts["amp_skipped"] = 1.0
            return float(norm)
        if self.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.train.grad_clip, norm)
        if after_clip is not None:
            after_clip()
        if self.optimizer_step(self.optimizer):
            self.lr_scheduler.step()
        return float(norm)

    def accumulate(self, loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]], forget: Any,
                   remain: Any, generator: torch.Generator | None = None) -> dict[str, float]:
        """Backward of `loss_fn(self, forget, remain) -> (total, parts)` over the step's batches, in
        train.grad_accum_steps = k equal micro-batches: each micro-batch backpropagates total / k and
        draws its share of the step's random numbers (shard.py: part r·k + m of N·k), so k micro-batches
        give the gradient of one batch. `generator`: the one `loss_fn` draws from (default: the run's).
        Returns the mean of the micro-batches' `parts`."""
        k = self.cfg.train.grad_accum_steps
        if k == 1:
            total, parts = loss_fn(self, forget, remain)
            self.backward(total)
            return parts
        gen = generator if generator is not None else self.generator
        start, (index, count) = gen.get_state(), shard.part(gen)
        sums: dict[str, float] = {}
        try:
            for m in range(k):
                gen.set_state(start)  # every micro-batch draws the step's global numbers, keeps its rows
                gen.index, gen.count = index * k + m, count * k
                total, parts = loss_fn(self, micro_batch(forget, k, m), micro_batch(remain, k, m))
                self.backward(total / k)
                for key, v in parts.items():
                    sums[key] = sums.get(key, 0.0) + v / k
        finally:
            gen.index, gen.count = index, count
        return sums

    def load_param_file(self, path: str, key: str) -> list[torch.Tensor]:
        """The tensors of a per-parameter file (`checkpoint.load_param_file`: exactly `param_names`, their
        shapes) in `params` order, float32 on their device; ErasediffError naming `method.<key>` otherwise."""
        shapes = {n: tuple(p.shape) for n, p in zip(self.param_names, self.params)}
        tensors = load_param_file(Path(path), shapes, f"method.{key} file {path}")
        return [tensors[n].to(p.device, torch.float32) for n, p in zip(self.param_names, self.params)]


@dataclass
class MethodData:
    """What `setup` receives: the endless batch iterators (None where the split is empty)."""

    forget: Any
    remain: Any


Batch = Any


@dataclass(frozen=True)
class Artifact:
    """A file or run directory a method reads at setup, made beforehand by `precompute` (docs/architecture.md).

    key: the method config key that holds its path (relative paths: to the working directory, as every
    path of a config). Unset (null) means `<artifacts dir>/<default>`: `--artifacts-dir` of `precompute`
    and `unlearn`, else `<output_root>/<experiment>`, the folder of the experiment's run directories, so
    that both commands find the same file (`Method.with_artifact_paths`).
    It is made in one of two ways:
    - compute(cfg, out, progress) -> summary dict: builds the file from this very config (its
      model.pretrained, data and method keys) and writes only `out`, never over an existing file;
    - train_config: the method config key naming the YAML of a `train` run of the loop (BlindSpot's
      proxy), run with the same --set items except method.* and model.pretrained, into `out`.
    """

    key: str
    default: str  # file or folder name under the artifacts dir
    description: str  # what it is, for messages
    compute: Callable[[RunConfig, Path, bool], dict[str, Any]] | None = None
    train_config: str | None = None

    def __post_init__(self) -> None:
        if (self.compute is None) == (self.train_config is None):
            raise TypeError(f"artifact '{self.key}' needs exactly one of compute / train_config")


class Method:
    #: registry name, = the `method.name` config value
    name: ClassVar[str]
    #: the method's config dataclass (first field `name: str`)
    Config: ClassVar[type]
    #: which batches the loop draws and passes each step (a method may compute them from its config
    #: in __init__: the loop asks the instance)
    needs_forget: bool = True
    needs_remain: bool = True
    #: allowed for the `train` command (pretraining / Retrain / proxies): a plain training objective
    training_objective: ClassVar[bool] = False
    #: what `setup` reads, made beforehand by the `precompute` command (see Artifact)
    artifacts: ClassVar[tuple[Artifact, ...]] = ()

    @classmethod
    def with_artifact_paths(cls, cfg: RunConfig, artifacts_dir: str | Path | None = None) -> RunConfig:
        """`cfg` with every unset artifact key set to `<artifacts_dir>/<default>` (None: `<output_root>/
        <experiment>`); keys already set stay as they are."""
        folder = Path(artifacts_dir) if artifacts_dir is not None else Path(cfg.output_root) / cfg.experiment
        unset = {a.key: str(folder / a.default) for a in cls.artifacts if getattr(cfg.method, a.key) is None}
        return cfg.model_copy(update={"method": cfg.method.model_copy(update=unset)}) if unset else cfg

    @classmethod
    def check_artifacts(cls, cfg: RunConfig) -> None:
        """ErasediffError when an artifact key is unset or names nothing (before a model is built)."""
        for a in cls.artifacts:
            path = getattr(cfg.method, a.key)
            if path is None:
                raise ConfigError(
                    f"config key 'method.{a.key}' is not set ({a.description}): 'unlearn' and 'precompute' use "
                    f"<artifacts dir>/{a.default}; elsewhere set it to the path 'erasediff precompute' wrote"
                )
            if not Path(path).exists():
                raise ErasediffError(
                    f"method.{a.key} '{path}' not found ({a.description}): make it with 'erasediff precompute' on "
                    "this config (the same --set items and --artifacts-dir)"
                )

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def setup(self, state: TrainState, data: MethodData) -> None:
        """Called once before the first step (and again after resume, before load_state_dict)."""

    def loss(self, state: TrainState, forget: Batch, remain: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def update(self, state: TrainState, forget: Batch, remain: Batch) -> dict[str, float]:
        """Default step: zero_grad, loss and backward (over train.grad_accum_steps micro-batches), clip,
        optimiser step."""
        state.optimizer.zero_grad(set_to_none=True)
        parts = state.accumulate(self.loss, forget, remain)
        parts["grad_norm"] = state.clip_and_step(parts=parts)
        return parts

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
