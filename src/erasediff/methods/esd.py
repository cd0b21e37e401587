"""ESD (Gandikota et al., ICCV 2023, "Erasing Concepts from Diffusion Models"): negative-guidance distillation.

Per step (PAPER.md §3 "ESD-x / ESD-u" row; PEERS.md §4(b)), for the forget prompts c of a D_f batch
(only the batch's prompt ids are used, never its images):
  1. z_T ~ N(0, I) of the model's sample shape ((B, 4, 64, 64) for SD v1.4 at 512 px); k ~ U{0..n−1};
     run k guided DDIM steps (of n = `ddim_steps`, guidance `start_guidance` in the diffusers
     convention ε_∅ + s(ε_c − ε_∅)) from z_T with prompt c, without gradients, using the model being
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
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from annotated_types import Ge

from ..config import SampleConfig
from ..errors import ConfigError
from ..losses import eps_mse
from . import register
from .base import Method, MethodData, TrainState


@dataclass(frozen=True)
class ESDConfig:
    name: str = "esd"
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

    def check_run(self, run, path: str) -> None:
        """Checks against the other sections (RunConfig.validate calls this)."""
        T = run.diffusion.num_train_timesteps
        if self.ddim_steps > T:
            raise ConfigError(f"config key '{path}.ddim_steps' must be <= diffusion.num_train_timesteps = {T} "
                              f"(got {self.ddim_steps})")


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
        # shape of a model input (C, h, w): latent families expose it, else one encoded batch tells
        shape = getattr(bb, "sample_shape", None)
        self.shape = tuple(shape) if shape is not None else tuple(bb.encode(next(data.forget))[0].shape[1:])
        self.sample_cfg = SampleConfig(sampler="ddim", steps=self.cfg.ddim_steps, eta=0.0,
                                       guidance=self.cfg.start_guidance, guidance_convention="diffusers",
                                       clip_denoised=False)

    @torch.no_grad()
    def partial_sample(self, state: TrainState, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-2 of the module docstring: (z (B, *shape), t (B,) int64) for conditions `cond` (B,)."""
        from ..samplers import make_scheduler  # late: keeps config validation free of the diffusers import

        bb, gen, n = state.backbone, state.generator, self.cfg.ddim_steps
        sched = make_scheduler(bb, self.sample_cfg)
        k = int(torch.randint(0, n, (1,), generator=gen, device=gen.device))
        z = torch.randn((cond.shape[0], *self.shape), generator=gen, device=gen.device).to(bb.device)
        sampler = state.model if self.cfg.sample_with == "current" else self.frozen
        was_training = sampler.training
        sampler.eval()
        for tau in sched.timesteps[:k]:
            t_batch = torch.full((z.shape[0],), int(tau), dtype=torch.long, device=bb.device)
            z = sched.step(bb.guided_eps(sampler, z, t_batch, cond, self.sample_cfg), tau, z, eta=0.0).prev_sample
        sampler.train(was_training)
        lo = int(sched.timesteps[k])
        hi = min(lo + bb.num_timesteps // n, bb.num_timesteps)
        t = torch.randint(lo, max(hi, lo + 1), (cond.shape[0],), generator=gen, device=gen.device).to(bb.device)
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
