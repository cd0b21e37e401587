"""The method interface (DESIGN.md "Two abstractions") and the state the loop hands to a method.

A method is one small class with its own config dataclass, registered by name:
- `setup(state, data)` once before the first step (e.g. keep the forget iterator for inner loops);
- `loss(state, forget, remain) -> (total, parts)` for methods with one objective per step;
- `update(state, forget, remain) -> logs`, by default zero_grad, loss, backward, clip, step;
  EraseDiff overrides it for its inner/outer structure;
- `state_dict()` / `load_state_dict()` for resume (tensors allowed anywhere in the nested dict).
A method never tests which dataset or model family it runs on: it asks the backbone adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from ..config import RunConfig
from ..ema import EMA
from ..errors import NonFiniteStep

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


@dataclass
class MethodData:
    """What `setup` receives: the endless batch iterators (None where the split is empty)."""

    forget: Any
    remain: Any


Batch = Any


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
