"""ESD (Gandikota et al., ICCV 2023, "Erasing Concepts from Diffusion Models"): negative-guidance distillation.

Per step (docs/baselines.md "ESD"), for the forget prompts c of a D_f batch (only the batch's prompt
ids are used, never its images):
  1. k ~ U{0..n−1}; z_T ~ N(0, I) of the backbone's `sample_shape` ((B, 4, 64, 64) for SD v1.4 at
     512 px); the project's one sampler (`samplers.sample`, `stop_after=k`) runs the first k guided
     DDIM steps (of n = `ddim_steps`, guidance `start_guidance` in the diffusers convention
     ε_∅ + s(ε_c − ε_∅), η = 0) from z_T with prompt c, without gradients, using the model being
     trained (`sample_with: current`, the CompVis code) or the frozen copy (`frozen`, the newer
     diffusers code). z is then at the noise level of the k-th DDIM timestep τ_k.
  2. t ~ U[τ_k, τ_k + T/n): the training timestep inside that DDIM step's bin.
  3. With the frozen copy ε* of the starting UNet:
         target = A − η·(ε*(z, t, c) − ε*(z, t, ∅)),   A = ε*(z, t, ∅)   (`anchor: null`, paper + CompVis code)
                                                         A = ε*(z, t, c)   (`anchor: concept`, the newer diffusers code)
     η = `negative_guidance` (CompVis default 1.0; diffusers code 2.0).
  4. L = ‖ε_θ(z, t, c) − sg[target]‖² (mean).
Which parameters train is `model.trainable`: `xattn` = ESD-x (Imagenette), `noxattn` = ESD-u (nudity).
The frozen copy costs one extra UNet in memory (3.4 GB fp32 for SD v1.4).

Not reproduced: the CompVis code draws t in the bin of the DDIM *step index* k (t ∈ [k·T/n, (k+1)·T/n))
rather than of the latent's noise level; here t always matches the noise level of z.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal

import torch
from annotated_types import Ge

from ..config import MethodConfig, RunConfig, SampleConfig, at_most_timesteps
from .. import shard
from ..errors import ConfigError
from ..losses import eps_mse
from . import register
from .base import Method, MethodData, TrainState


class ESDConfig(MethodConfig):
    name: Literal["esd"] = "esd"
    #: η of the target ε*(∅) − η[ε*(c) − ε*(∅)]
    negative_guidance: Annotated[float, Ge(0)] = 1.0
    #: first term of the target: `null` ε*(z,∅) (paper, CompVis code) or `concept` ε*(z,c) (diffusers code)
    anchor: Literal["null", "concept"] = "null"
    #: guidance scale (diffusers convention) of the partial DDIM sampling that produces z
    start_guidance: Annotated[float, Ge(0)] = 3.0
    #: n: DDIM steps of a full trajectory (<= diffusion.num_train_timesteps); z stops after k ~ U{0..n−1} of them
    ddim_steps: Annotated[int, Ge(1)] = 50
    #: which UNet samples z: the one being trained (CompVis code) or the frozen copy (diffusers code)
    sample_with: Literal["current", "frozen"] = "current"

    def check_run(self, run: RunConfig) -> None:
        at_most_timesteps(run, "method.ddim_steps", self.ddim_steps)


@register
class ESD(Method):
    name = "esd"
    Config = ESDConfig
    needs_forget = True  # the forget prompts come with the D_f batches
    needs_remain = False

    def setup(self, state: TrainState, data: MethodData) -> None:
        bb = state.backbone
        if not bb.conditional:
            raise ConfigError(f"method 'esd' guides with a prompt: it needs a conditional model (backbone "
                              f"'{state.cfg.model.backbone}' is not)")
        # frozen ε*: the starting weights, never trained (eval: no dropout)
        self.frozen = copy.deepcopy(state.model).eval().requires_grad_(False)
        self.sample_cfg = SampleConfig(sampler="ddim", steps=self.cfg.ddim_steps, eta=0.0,
                                       guidance=self.cfg.start_guidance, guidance_convention="diffusers",
                                       clip_denoised=False,  # part of the step: the training precision
                                       mixed_precision=state.cfg.train.mixed_precision)

    def partial_sample(self, state: TrainState, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-2 of the module docstring: (z (B, *sample_shape), t (B,) int64) for conditions `cond` (B,).

        Draws k, then z_T, then t from `state.generator`, in that order.
        """
        from ..samplers import (  # late: config validation imports no diffusers
            sample,
            sampling_timesteps,
        )

        bb, gen, n = state.backbone, state.generator, self.cfg.ddim_steps
        k = int(torch.randint(0, n, (1,), generator=gen, device=gen.device))
        z = shard.randn((cond.shape[0], *bb.sample_shape), gen).to(bb.device)
        sampler = state.model if self.cfg.sample_with == "current" else self.frozen
        z = sample(bb, sampler, cond, z, self.sample_cfg, stop_after=k)
        lo = int(sampling_timesteps(bb, self.sample_cfg)[k])
        hi = min(lo + bb.num_timesteps // n, bb.num_timesteps)
        t = shard.randint(lo, max(hi, lo + 1), (cond.shape[0],), gen).to(bb.device)
        return z, t

    def loss(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        bb, eta = state.backbone, self.cfg.negative_guidance
        _, labels = forget  # the batch's prompt/class ids; the images are not used
        c = bb.condition_for_classes(labels)
        b = c.shape[0]
        z, t = self.partial_sample(state, c)
        with torch.no_grad():
            both = bb.predict(self.frozen, torch.cat([z, z]), torch.cat([t, t]), bb.cat_conditions(c, bb.null_condition(b)))
            e_c, e_null = both[:b], both[b:]  # ε*(z, t, c), ε*(z, t, ∅): (B, *shape)
            anchor = e_null if self.cfg.anchor == "null" else e_c
            target = anchor - eta * (e_c - e_null)
        loss = eps_mse(bb.predict(state.model, z, t, c), target)
        return loss, {"loss": loss.item(), "loss_f": loss.item(), "t": float(t.float().mean())}
