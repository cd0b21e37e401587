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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from ..checkpoint import load_param_file
from ..config import RunConfig
from ..ema import EMA
from ..errors import ConfigError, ErasediffError, NonFiniteStep

if TYPE_CHECKING:  # keep config validation free of the diffusers import (seconds)
    from ..backbones.base import Backbone


@dataclass
class TrainState:
    """Everything a step may touch. `params` are the trainable parameters (model.trainable)."""

    cfg: RunConfig
    backbone: "Backbone"
    model: nn.Module
    params: list[nn.Parameter]
    param_names: list[str]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    generator: torch.Generator  # noise, timesteps and label dropout of the training steps
    step: int = 0
    progress: bool = True  # show the bars of setup work (a method's own sampling), as build_run(progress=)

    def grad_norm(self, parts: dict[str, float] | None = None) -> torch.Tensor:
        """Global L2 norm of the trainable gradients (0-dim tensor); raises NonFiniteStep (before any
        optimiser step) when it or a loss in `parts` is NaN or infinite (the loop's train.nonfinite policy
        decides what happens then)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        values = {**(parts or {}), "grad_norm": float(norm)}
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteStep(values)
        return norm

    def clip_and_step(self, after_clip: Callable[[], None] | None = None,
                      parts: dict[str, float] | None = None) -> float:
        """Check that the losses `parts` and the global grad norm are finite (else NonFiniteStep, nothing
        applied), clip the norm to train.grad_clip, call `after_clip` (e.g. SalUn's gradient mask), then
        take one optimiser + LR-schedule step. Returns the pre-clip norm."""
        norm = self.grad_norm(parts)
        if self.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.train.grad_clip, norm)
        if after_clip is not None:
            after_clip()
        self.optimizer.step()
        self.lr_scheduler.step()
        return float(norm)

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
        """Default step: zero_grad, loss, backward, clip, optimiser step."""
        state.optimizer.zero_grad(set_to_none=True)
        total, parts = self.loss(state, forget, remain)
        total.backward()
        parts["grad_norm"] = state.clip_and_step(parts=parts)
        return parts

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
