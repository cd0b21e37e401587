"""Selective Amnesia (Heng & Soh, NeurIPS 2023): continual-learning style forgetting with EWC.

Objective per step (docs/baselines.md "Selective Amnesia"; docs/peers.md "Selective Amnesia"):

    L(θ) = E_{x_f~U[-1,1]^d, c~C_f} ‖ε − ε_θ(x_t, t, c)‖²            surrogate q: noise images labelled c_f
         + γ · E_{(x,c)~replay} ‖ε − ε_θ(x_t, t, c)‖²                 same t as the forget batch (SA)
         + λ_EWC · Σ_i F_i (θ_i − θ*_i)²                              θ* = the weights at setup

- both ε-losses: ε ~ N(0, I), no label dropout (SA `train_forget`, cond_drop_prob = 0); mean-reduced MSE
  as the rest of the package (docs/method.md "Loss reduction"). The surrogate images have the shape of the replay batch.
- `replay: generated` (default, SA* of the paper, docs/baselines.md "Selective Amnesia"): at setup the model
  samples `replay_samples_per_class` images of every REMAINING class with the config's sampler
  (`sample`: guidance w = 2 in SA's configs; EMA weights when the state has an EMA and
  `sample.use_ema`) into memory; batches are drawn from them. `replay: real` uses the loop's D_r batches
  (what the EraseDiff code's SA baseline does, docs/peers.md "EraseDiff (official)").
- F = the diagonal empirical Fisher of the ELBO at θ* (`compute_fisher`, docs/peers.md "Selective Amnesia"):
      F_i = (1/N) Σ_n ( ∂/∂θ_i Σ_{t} ℓ(θ; x_n, c_n, t, ε_{n,t}) )²,   ℓ = ‖ε − ε_θ(x_t, t, c̃)‖² per sample
  one fresh ε per (n, t); c̃ = c_n replaced by the null condition with probability `fisher_cond_drop`
  (0.1: SA's loss default); the network in eval mode (no dropout) at the raw, non-EMA weights.
  Options (defaults follow SA/EraseDiff code):
    fisher_source          generated (SA: the model's own samples of ALL classes, `sample` settings) | real
    fisher_samples_per_class  N/K (SA: 500)
    fisher_timesteps       how many t of {0..T−1} enter the sum: all (1000, SA) or an evenly spaced
                           subset whose gradient is scaled by T/n so that it estimates the full sum
                           (for the CPU/digits setting)
    fisher_chunks          the timesteps of one sample are processed in this many forward/backward
                           passes (SA `--n_chunks 20`): more chunks = less memory, more passes
    fisher_input_range     "[-1,1]" (correct) | "[0,1]": SA fed its PNG samples through ToTensor without
                           the [-1,1] rescale (docs/peers.md "Selective Amnesia", a quirk kept as an option; the per-image
                           min-max stretch and uint8 rounding of its PNGs are not reproduced)
    fisher_reduction       "sum": ℓ summed over pixels (SA's and EraseDiff's `keepdim=True` loss) |
                           "mean". With mean-reduced training losses and λ_EWC = 10 the default is the
                           EraseDiff code's combination; SA's own (all sums) corresponds to λ_EWC = 10/d
                           with d = C·H·W (3072 on CIFAR10). The useful λ_EWC depends on the Fisher's
                           scale: on the small digits net λ ≥ 1e-3 pins the model (DDPM/configs/digits).
The Fisher file is the method's declared artifact (`Method.artifacts`, docs/architecture.md): `erasediff
precompute` computes it into `method.fisher` (unset: <artifacts dir>/fisher.safetensors) from the same config
before `unlearn`. A run stops before anything is written when the file is missing or keyed differently
from the model's trainable parameters (ErasediffError naming the file and keys).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import torch
from annotated_types import Ge, Interval
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..checkpoint import fresh_path, save_param_file
from ..config import MethodConfig, RunConfig, at_most_timesteps, dump_config
from ..data import InfiniteBatches, images_of_classes
from ..distributed import processes
from .. import shard
from ..errors import ConfigError
from ..losses import denoising_loss
from . import register
from .base import Artifact, Method, MethodData, TrainState

if TYPE_CHECKING:
    from ..backbones.base import Backbone


class SelectiveAmnesiaConfig(MethodConfig):
    name: Literal["selective_amnesia"] = "selective_amnesia"
    #: safetensors file of the Fisher diagonal (`precompute` writes it); null = <artifacts dir>/fisher.safetensors
    fisher: Optional[str] = None
    lambda_ewc: Annotated[float, Ge(0)] = 10.0
    gamma: Annotated[float, Ge(0)] = 1.0
    replay: Literal["generated", "real"] = "generated"
    replay_samples_per_class: Annotated[int, Ge(1)] = 500
    # --- Fisher computation (`compute_fisher`) ---
    fisher_source: Literal["generated", "real"] = "generated"
    fisher_samples_per_class: Annotated[int, Ge(1)] = 500
    fisher_timesteps: Annotated[int, Ge(1)] = 1000  # <= diffusion.num_train_timesteps (check_run)
    fisher_chunks: Annotated[int, Ge(1)] = 20
    fisher_input_range: Literal["[-1,1]", "[0,1]"] = "[-1,1]"
    fisher_cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    fisher_reduction: Literal["sum", "mean"] = "sum"

    def check_run(self, run: RunConfig) -> None:
        at_most_timesteps(run, "method.fisher_timesteps", self.fisher_timesteps)


# ------------------------------------------------------------------------------------------- Fisher
def fisher_timestep_grid(num_timesteps: int, n: int, device: torch.device) -> torch.Tensor:
    """n evenly spaced timesteps of {0..T−1} ((n,) int64); all of them when n = T."""
    if n > num_timesteps:
        raise ConfigError(f"config key 'method.fisher_timesteps' must be <= T = {num_timesteps} (got {n})")
    return torch.linspace(0, num_timesteps - 1, n, device=device).round().long()


def fisher_diagonal(
    backbone: Backbone,
    model: nn.Module,
    params: list[nn.Parameter],
    images: torch.Tensor,
    conds: Any,
    timesteps: torch.Tensor,
    *,
    chunks: int,
    cond_drop: float,
    reduction: str,
    generator: torch.Generator,
    progress: bool = True,
    part: tuple[int, int] = (0, 1),
) -> list[torch.Tensor]:
    """Diagonal empirical Fisher F_i = (1/N) Σ_n (s · ∂/∂θ_i Σ_{t∈timesteps} ℓ_n,t)², s = T / len(timesteps).

    images: (N, C, H, W) (moved to the backbone's device one at a time); conds: N conditions (a tensor
    with leading dim N); timesteps: (n_t,) int64. One fresh ε per (sample, t); the timesteps of one
    sample go through the network in `chunks` batches whose gradients are summed before squaring.
    ℓ_n,t = ‖ε − ε_θ(x_t, t, c̃)‖² summed ("sum") or averaged ("mean") over pixels. Returns float32
    tensors shaped like `params`. Call with the model in the mode wanted (SA: eval).
    part = (r, N): this process computes the samples n ≡ r (mod N) and returns their share of the sum
    (the caller sums the shares over the processes); every process draws every sample's ε, so each
    sample sees the one-process noise.
    """
    scale = backbone.num_timesteps / len(timesteps)
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    rank, world = part
    for n in tqdm(range(images.shape[0]), desc="Fisher", unit="sample", disable=not progress):
        x0 = images[n : n + 1].to(backbone.device)  # (1, C, H, W)
        c = conds[n : n + 1]
        grad_sum = [torch.zeros_like(f) for f in fisher]
        for ts in torch.chunk(timesteps, chunks):
            b = ts.shape[0]
            eps = torch.randn((b, *x0.shape[1:]), generator=generator, device=generator.device).to(x0.device)
            cond = backbone.drop_condition(c.expand(b, *c.shape[1:]), cond_drop, generator)
            if n % world != rank:
                continue  # another process's sample: its noise is drawn (above) but not used here
            pred = backbone.predict(model, backbone.add_noise(x0.expand_as(eps), eps, ts), ts, cond)
            per_t = (eps - pred).square().flatten(1)  # (b, C·H·W)
            loss = scale * (per_t.sum(1) if reduction == "sum" else per_t.mean(1)).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for acc, g in zip(grad_sum, grads):
                if g is not None:
                    acc += g.float()
        if n % world == rank:
            for f, g in zip(fisher, grad_sum):
                f += g.square()
    return [f / images.shape[0] for f in fisher]


def compute_fisher(cfg: RunConfig, out_path: str | Path, progress: bool = True) -> dict[str, Any]:
    """Compute SA's Fisher diagonal for `cfg` (a selective_amnesia config) and write it to `out_path`.

    The method's `fisher` artifact. Builds the model as a run of `cfg` starts from it (`prepare`:
    model.pretrained, raw weights for the gradients, EMA for the generated samples), draws the Fisher
    samples (`method.fisher_source`), and writes ONLY `out_path`: safetensors keyed by the trainable
    parameter names, metadata = the resolved config. Refuses an existing `out_path`.
    Returns a summary (path, samples, timesteps, parameters, seconds, mean).
    """
    from ..prepare import (  # late: configs load without diffusers
        prepare_data,
        prepare_model,
        sample_as_configured,
    )

    if not isinstance(cfg.method, SelectiveAmnesiaConfig):
        raise ConfigError(f"the Fisher is computed from a selective_amnesia config (method.name is '{cfg.method.name}')")
    m, out, start = cfg.method, fresh_path(out_path), time.perf_counter()
    procs = processes(cfg.device)  # N processes split the samples (docs/distributed.md)
    device = procs.device
    progress = progress and procs.is_main
    torch.manual_seed(cfg.seed)  # a random init (no model.pretrained) is the one a run of cfg starts from
    dataset, _, _ = prepare_data(cfg, device, forget=False, remain=False)
    parts = prepare_model(cfg, device)
    bb = parts.backbone
    timesteps = fisher_timestep_grid(bb.num_timesteps, m.fisher_timesteps, device)
    classes = list(range(dataset.num_classes))
    if m.fisher_source == "generated":
        images, labels = sample_as_configured(cfg, bb, parts.model, parts.ema, classes, m.fisher_samples_per_class,
                                              progress)
    else:
        images, labels = images_of_classes(dataset, classes, m.fisher_samples_per_class)
    if m.fisher_input_range == "[0,1]":
        images = (images + 1) / 2  # SA's ToTensor() without the [-1, 1] rescale
    parts.model.eval()  # SA: model.eval() (no dropout); label dropout stays (fisher_cond_drop)
    fisher = fisher_diagonal(
        bb, parts.model, parts.params, images, bb.condition_for_classes(labels), timesteps,
        chunks=m.fisher_chunks, cond_drop=m.fisher_cond_drop, reduction=m.fisher_reduction,
        generator=torch.Generator(device=device).manual_seed(cfg.seed), progress=progress,
        part=(procs.rank, procs.world),
    )
    procs.sum_(fisher)  # Σ over the whole sample set: every process's share
    if procs.is_main:
        save_param_file(out, dict(zip(parts.param_names, fisher)), dump_config(cfg), "fisher")
    procs.barrier()  # the file exists for every process once this returns
    return {
        "path": str(out),
        "samples": int(images.shape[0]),
        "timesteps": int(timesteps.shape[0]),
        "parameters": int(sum(f.numel() for f in fisher)),
        "mean": float(sum(f.sum() for f in fisher) / sum(f.numel() for f in fisher)),
        "seconds": round(time.perf_counter() - start, 2),
    }


# ------------------------------------------------------------------------------------------- method
@register
class SelectiveAmnesia(Method):
    name = "selective_amnesia"
    Config = SelectiveAmnesiaConfig
    needs_forget = False  # the surrogate q replaces D_f; the forget classes come from data.forget_classes
    artifacts = (Artifact(key="fisher", default="fisher.safetensors", compute=compute_fisher,
                          description="SA's diagonal Fisher of model.pretrained"),)

    def __init__(self, cfg: SelectiveAmnesiaConfig):
        super().__init__(cfg)
        self.needs_remain = cfg.replay == "real"

    def setup(self, state: TrainState, data: MethodData) -> None:
        from ..prepare import (
            sample_as_configured,  # late: configs load without diffusers
        )

        forget = list(state.cfg.data.forget_classes)
        if not forget:
            raise ConfigError("method 'selective_amnesia' needs the classes to forget: set data.forget_classes (e.g. [0])")
        if not state.backbone.conditional:
            raise ConfigError(
                f"method 'selective_amnesia' labels its surrogate images with the forget class: it needs a conditional "
                f"model (backbone '{state.cfg.model.backbone}' is not)"
            )
        self.fisher = state.load_param_file(self.cfg.fisher, "fisher")  # present: build_run checked the artifact
        self.theta_star = [p.detach().clone() for p in state.params]  # θ*: raw weights at setup
        self.forget_classes = torch.tensor(forget, dtype=torch.long)
        if self.cfg.replay == "generated":
            # the replayed D_r becomes the loop's remain batches (drawn, split over processes and
            # micro-batches, and checkpointed like real ones); every process samples the same set
            remaining = [c for c in range(state.cfg.model.arch.num_classes) if c not in forget]
            images, labels = sample_as_configured(state.cfg, state.backbone, state.model, state.ema, remaining,
                                                  self.cfg.replay_samples_per_class, state.progress)
            data.remain = InfiniteBatches(
                TensorDataset(images, labels), torch.arange(len(labels)), state.cfg.data.batch_size,
                seed=state.cfg.seed * 2, device=state.backbone.device, part=(state.procs.rank, state.procs.world),
            )

    def surrogate_batch(self, state: TrainState, shape: torch.Size) -> tuple[torch.Tensor, Any]:
        """x_f ~ U[-1, 1] of `shape` (B, C, H, W), each labelled with a forget class drawn uniformly."""
        gen = state.generator
        x_f = shard.rand(shape, gen).to(state.backbone.device) * 2 - 1
        pick = shard.randint(0, len(self.forget_classes), (shape[0],), gen).cpu()
        return x_f, state.backbone.condition_for_classes(self.forget_classes[pick])

    def ewc_penalty(self, state: TrainState) -> torch.Tensor:
        """Σ_i F_i (θ_i − θ*_i)² over the trainable parameters (scalar, differentiable)."""
        return sum(((p - p0).square() * f).sum() for p, p0, f in zip(state.params, self.theta_star, self.fisher))

    def loss(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        bb, model = state.backbone, state.model
        x_r, c_r = bb.encode(remain)  # real D_r, or the replayed samples (setup)
        x_f, c_f = self.surrogate_batch(state, x_r.shape)
        loss_f, t = denoising_loss(bb, model, x_f, c_f, state.generator)  # standard Gaussian target, no dropout
        loss_r, _ = denoising_loss(bb, model, x_r, c_r, state.generator, t=t)  # same t, as SA
        ewc = self.ewc_penalty(state)
        total = loss_f + self.cfg.gamma * loss_r + self.cfg.lambda_ewc * ewc
        return total, {"loss": total.item(), "loss_f": loss_f.item(), "loss_r": loss_r.item(), "ewc": ewc.item()}

