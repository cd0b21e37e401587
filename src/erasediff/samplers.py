"""The one sampler of every model family: DDPM ancestral and DDIM with classifier-free guidance.

`sample` is the project's only denoising loop. The evaluation samples (`sample_folders.py`, `evaluate.py`),
the loop's sample grids (`Run.sample_grid`), a generated D_r (`build.generated_remain`), Selective
Amnesia's replay (all through `sample_classes` / `sample_unit`) and ESD's partial trajectories
(`stop_after`, docs/baselines.md "ESD") run it. What differs between the families, the backbone says:
- `sample_shape`: (C, h, w) of a model input: an image for the pixel DDPMs, a VAE latent for Stable
  Diffusion (4, S/8, S/8);
- `condition_for_classes`: class ids -> the model's conditions (class ids, or prompt ids);
- `guided_eps`: classifier-free guidance in ONE batched forward (conditional and null stacked), in the
  `sa` (1+w)·ε_c − w·ε_∅ or `diffusers` ε_∅ + w·(ε_c − ε_∅) convention;
- `decode`: model space -> images in [-1, 1] (a clamp for pixel models, the VAE for latents).

The reverse step is the scheduler's own (`DDPMScheduler.step`, `DDIMScheduler.step`); this module adds
the guided ε and fixes the randomness: image i of class c is a function of (model, sample config, c, i)
alone (docs/evaluation.md "The evaluation noise"). Settings follow the peers (docs/evaluation.md
"Sampling for evaluation"): SA's "generalized" sampler with 1000 steps and η = 1 is DDPM-like ancestral
sampling; DDIM uses "leading" timestep spacing (SA's "skip uniform") and ᾱ = 1 at the end. By default
`clip_sample=False`: clipping x̂0 inside DDIM with CFG badly degrades samples at 50–100 steps
(docs/cpu.md "Sampler pitfalls"); only the final images are clamped, by `decode`. `sample.clip_denoised`
turns x̂0 clipping on (see SampleConfig).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn
from tqdm.auto import tqdm

from .backbones.base import Backbone
from .config import SampleConfig
from .device import precision_context


def make_scheduler(backbone: Backbone, cfg: SampleConfig) -> DDIMScheduler | DDPMScheduler:
    d = backbone.diffusion
    common = dict(
        num_train_timesteps=d.num_train_timesteps,
        beta_schedule=d.beta_schedule,
        beta_start=d.beta_start,
        beta_end=d.beta_end,
        clip_sample=cfg.clip_denoised,
    )
    if cfg.sampler == "ddpm":
        sched = DDPMScheduler(variance_type=cfg.ddpm_variance, **common)
        sched.set_timesteps(d.num_train_timesteps)
    else:
        sched = DDIMScheduler(set_alpha_to_one=True, timestep_spacing="leading", **common)
        sched.set_timesteps(cfg.steps)
    return sched


def sampling_timesteps(backbone: Backbone, cfg: SampleConfig) -> torch.Tensor:
    """The timesteps τ_0 > τ_1 > … that `sample` visits ((n,) int64; n = cfg.steps for DDIM, T for DDPM)."""
    return make_scheduler(backbone, cfg).timesteps


@torch.no_grad()
def sample(
    backbone: Backbone,
    model: nn.Module,
    cond: Any,
    noise: torch.Tensor,
    cfg: SampleConfig,
    generator: torch.Generator | None = None,
    progress: bool = False,
    *,
    stop_after: int | None = None,
) -> torch.Tensor:
    """Run the reverse process from `noise` (B, *backbone.sample_shape) ~ N(0, I) for conditions `cond` (B,).

    Returns x (B, *sample_shape) in the model's space (pixels or latents), neither decoded nor clamped
    (`backbone.decode` makes images of it): x_0 after the whole schedule, or with `stop_after` = k
    (0 ≤ k ≤ n) x after the first k steps, i.e. at the noise level of `sampling_timesteps(...)[k]`
    (ESD's partial trajectory, docs/baselines.md "ESD"; k = 0 returns the noise).
    `generator` drives the per-step noise of DDPM / DDIM with η > 0 (unused for DDIM η = 0).
    The model's forwards run under sample.mixed_precision autocast.
    Runs without gradients under `torch.no_grad` (not inference mode: ESD trains on the result) and
    with the model in eval mode (its mode is restored after).
    """
    sched = make_scheduler(backbone, cfg)
    timesteps = sched.timesteps
    if stop_after is not None:
        if not 0 <= stop_after <= len(timesteps):
            raise ValueError(f"stop_after must be in [0, {len(timesteps)}] (the schedule's steps), got {stop_after}")
        timesteps = timesteps[:stop_after]
    step_kw = {"eta": cfg.eta} if cfg.sampler == "ddim" else {}
    x = noise.to(backbone.device)
    was_training = model.training
    model.eval()
    n = x.shape[0]
    with precision_context(cfg.mixed_precision, x.device):  # the model's forwards; the update stays float32
        for t in tqdm(timesteps, desc="sampling", leave=False, disable=not progress):
            t_batch = torch.full((n,), int(t), dtype=torch.long, device=x.device)
            eps = backbone.guided_eps(model, x, t_batch, cond, cfg)
            x = sched.step(eps, t, x, generator=generator, **step_kw).prev_sample
    model.train(was_training)
    return x


def class_noise(classes: list[int], n_per_class: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Initial noise for `n_per_class` images of each class: (len(classes)·n, *shape), on the CPU.

    Each class draws from its own generator seeded by (seed, class), so image i of class c gets the
    same noise whichever other classes are sampled, and every method is scored on the same noise.
    """
    chunks = [
        torch.randn((n_per_class, *shape), generator=torch.Generator().manual_seed(seed * 1000 + c)) for c in classes
    ]
    return torch.cat(chunks)


def sampling_units(classes: list[int], n_per_class: int, batch_size: int) -> list[tuple[int, int, int]]:
    """The work units of class sampling: (class, start, stop) index ranges of at most `batch_size`.

    A batch never mixes classes, and each unit has its own step-noise generator (`unit_generator`), so
    image i of class c is a function of (model, sample config, c, i) alone: the same whether it is
    sampled in memory, into a folder, on one process or sharded over many, in one go or resumed.
    (For stochastic samplers sample.batch_size is part of that identity: it sets the units.)
    """
    return [(c, a, min(a + batch_size, n_per_class)) for c in classes for a in range(0, n_per_class, batch_size)]


def unit_generator(seed: int, c: int, start: int, device: torch.device) -> torch.Generator:
    """The generator of the per-step noise (DDPM, DDIM η > 0) of unit (c, start, ·)."""
    return torch.Generator(device=device).manual_seed(seed * 7919 + c * 1_000_003 + start)


def sample_unit(backbone: Backbone, model: nn.Module, c: int, start: int, stop: int, noise_c: torch.Tensor,
                cfg: SampleConfig) -> torch.Tensor:
    """Images start..stop−1 of class c: (stop−start, C, H, W) in [-1, 1] on the CPU, decoded by the backbone.

    noise_c: (≥ stop, *backbone.sample_shape) = class_noise([c], ≥ stop, shape, cfg.seed) (a prefix of the
    class's noise stream, so any n ≥ stop gives the same rows).
    """
    cond = backbone.condition_for_classes(torch.full((stop - start,), c, dtype=torch.long))
    gen = unit_generator(cfg.seed, c, start, backbone.device)
    return backbone.decode(sample(backbone, model, cond, noise_c[start:stop], cfg, generator=gen)).cpu()


def sample_classes(
    backbone: Backbone,
    model: nn.Module,
    classes: list[int],
    n_per_class: int,
    shape: tuple[int, ...],
    cfg: SampleConfig,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_per_class` images for each class, in single-class batches of ≤ `cfg.batch_size`, on fixed noise.

    shape: (C, h, w) of the initial noise, the backbone's `sample_shape` for every caller in the package.
    Returns (images (N, C, H, W) in [-1, 1] on the CPU, labels (N,) int64) with N = len(classes)·n,
    grouped by class in the order given. Deterministic for a given `cfg.seed` (see `sampling_units`).
    """
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(n_per_class)
    out = []
    bar = tqdm(total=len(labels), desc="generating", unit="img", disable=not progress)
    noise: dict[int, torch.Tensor] = {}
    for c, start, stop in sampling_units(classes, n_per_class, cfg.batch_size):
        if c not in noise:
            noise = {c: class_noise([c], n_per_class, shape, cfg.seed)}
        out.append(sample_unit(backbone, model, c, start, stop, noise[c], cfg))
        bar.update(stop - start)
    bar.close()
    return torch.cat(out), labels
