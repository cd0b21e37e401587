"""The backbone adapter: everything a method may ask of a model family (docs/architecture.md, abstractions).

Methods never test which dataset or model family they run on. Pixels vs latents and class ids vs
prompts live here: `encode` turns a data batch into (x0, cond), `predict` runs the network,
`other_condition` / `null_condition` give the conditions the methods need, `sample_shape` and
`decode` are the model's space for the one sampler (`samplers.sample`), and `trainable_parameters`
chooses what trains.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import nn

from ..config import ArchConfig, DiffusionConfig, SampleConfig
from .. import shard
from ..errors import ConfigError


class Backbone:
    """Base adapter: noise schedule, timesteps and classifier-free guidance shared by every family.

    Subclasses set `sample_shape` and implement `encode`, `decode`, `predict`, `condition_for_classes`,
    `null_condition`, `other_condition`, `drop_condition`, `build_model` and `load_model`.
    """

    #: True when the model takes a condition (class id / prompt) and supports CFG.
    conditional: bool = False
    #: (C, h, w) of a model input, what `samplers.sample` draws its noise in: an image, or a latent
    sample_shape: tuple[int, int, int]

    def __init__(self, diffusion: DiffusionConfig, device: torch.device):
        self.device = device
        self.diffusion = diffusion
        # DDPMScheduler holds the β schedule and ᾱ_t; its add_noise is the forward process (docs/method.md "Notation").
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            beta_start=diffusion.beta_start,
            beta_end=diffusion.beta_end,
            clip_sample=False,
        )
        self.num_timesteps = diffusion.num_train_timesteps

    # ---------------------------------------------------------------- forward process / timesteps
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·eps.  x0, eps: (B, ...); t: (B,) int64 in [0, T)."""
        return self.noise_scheduler.add_noise(x0, eps, t)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Antithetic timesteps as SA/EraseDiff do: draw n//2+1 uniformly, append T−1−t, keep n.

        Returns t: (n,) int64 in [0, T) on the backbone's device. With a `shard.ShardedGenerator` the
        antithetic pairs are drawn for the global batch and this process keeps its n rows.
        """
        n_all = shard.global_rows(n, generator)
        half = torch.randint(0, self.num_timesteps, (n_all // 2 + 1,), generator=generator, device=generator.device)
        t = torch.cat([half, self.num_timesteps - 1 - half])[:n_all]
        return shard.local_rows(t, generator).to(self.device)

    # --------------------------------------------------------------------------- family-specific
    def encode(self, batch: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space (B, *sample_shape) -> images (B, C, H, W) in [-1, 1] (the end of `samplers.sample_unit`)."""
        raise NotImplementedError

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        raise NotImplementedError

    def null_condition(self, n: int) -> Any:
        raise NotImplementedError

    def other_condition(self, cond: Any, generator: torch.Generator) -> Any:
        raise NotImplementedError

    def drop_condition(self, cond: Any, p: float, generator: torch.Generator) -> Any:
        """Replace each sample's condition by the null condition with probability p (CFG training).

        cond: (B,) int64 ids (class ids, prompt ids); the null id comes from `null_condition`.
        """
        if p <= 0:
            return cond
        drop = shard.rand(cond.shape, generator).to(cond.device) < p
        return torch.where(drop, self.null_condition(cond.shape[0]).to(cond.device), cond)

    def condition_for_classes(self, classes: torch.Tensor) -> Any:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def load_model(self, directory: str, **kwargs: Any) -> nn.Module:
        raise NotImplementedError

    # ------------------------------------------------------------------------- shared behaviour
    def trainable_parameters(self, model: nn.Module, mode: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that train. `full` = every parameter (DDPM)."""
        if mode == "full":
            return [(n, p) for n, p in model.named_parameters()]
        raise ConfigError(f"model.trainable '{mode}' is not supported by this backbone; valid choices: full")

    def guided_eps(
        self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: Any, sample_cfg: SampleConfig
    ) -> torch.Tensor:
        """Classifier-free guidance in ONE batched forward: cond and null stacked along the batch.

        xt: (B, C, H, W); t: (B,) int64. Convention (SampleConfig.guidance_convention):
        "sa": (1+w)·ε_c − w·ε_∅;  "diffusers": ε_∅ + w·(ε_c − ε_∅).
        """
        w = sample_cfg.guidance
        if not self.conditional or w == 0:
            return self.predict(model, xt, t, cond)
        n = xt.shape[0]
        both = self.predict(model, torch.cat([xt, xt]), torch.cat([t, t]), self.cat_conditions(cond, self.null_condition(n)))
        eps_c, eps_null = both[:n], both[n:]
        if sample_cfg.guidance_convention == "sa":
            return (1 + w) * eps_c - w * eps_null
        return eps_null + w * (eps_c - eps_null)

    def cat_conditions(self, a: Any, b: Any) -> Any:
        return torch.cat([a, b])


class PixelBackbone(Backbone):
    """Shared by the pixel-space DDPM families: batches are (images, class ids), used as they are.

    image_size: side of the images (`data.image_size`; None = `arch.sample_size`), so that
    sample_shape = (arch.in_channels, image_size, image_size).
    """

    def __init__(self, diffusion: DiffusionConfig, arch: ArchConfig, device: torch.device,
                 image_size: int | None = None):
        super().__init__(diffusion, device)
        self.arch = arch
        self.num_classes = arch.num_classes
        size = image_size or arch.sample_size
        self.sample_shape = (arch.in_channels, size, size)

    def encode(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """batch = (images (B,C,H,W) in [-1,1], labels (B,) int64) -> (x0, cond) on the device."""
        images, labels = batch
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels are images already: x (B, C, H, W) clamped to [-1, 1] (docs/evaluation.md "Sampling for evaluation")."""
        return x.clamp(-1, 1)
