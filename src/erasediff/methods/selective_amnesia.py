"""Selective Amnesia (Heng & Soh, NeurIPS 2023): continual-learning style forgetting with EWC.

Objective per step (PAPER.md §3 "SA" row; PEERS.md §1(b) "EWC and forgetting loss"):

    L(θ) = E_{x_f~U[-1,1]^d, c~C_f} ‖ε − ε_θ(x_t, t, c)‖²            surrogate q: noise images labelled c_f
         + γ · E_{(x,c)~replay} ‖ε − ε_θ(x_t, t, c)‖²                 same t as the forget batch (SA)
         + λ_EWC · Σ_i F_i (θ_i − θ*_i)²                              θ* = the weights at setup

- both ε-losses: ε ~ N(0, I), no label dropout (SA `train_forget`, cond_drop_prob = 0); mean-reduced MSE
  as the rest of the package (PAPER.md §7.10). The surrogate images have the shape of the replay batch.
- `replay: generated` (default, SA* of the paper, PEERS.md §1(b) "Generative replay"): at setup the model
  samples `replay_samples_per_class` images of every REMAINING class with the config's sampler
  (`sample`: guidance w = 2 in SA's configs; EMA weights when the state has an EMA and
  `sample.use_ema`) into memory; batches are drawn from them. `replay: real` uses the loop's D_r batches
  (what the EraseDiff code's SA baseline does, PAPER.md §3 / §7.8).
- F = the diagonal empirical Fisher of the ELBO at θ* (`compute_fisher`, PEERS.md §1(b) "FIM"):
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
                           the [-1,1] rescale (PEERS.md §1(b), a quirk kept as an option; the per-image
                           min-max stretch and uint8 rounding of its PNGs are not reproduced)
    fisher_reduction       "sum": ℓ summed over pixels (SA's and EraseDiff's `keepdim=True` loss) |
                           "mean". With mean-reduced training losses and λ_EWC = 10 the default is the
                           EraseDiff code's combination; SA's own (all sums) corresponds to λ_EWC = 10/d
                           with d = C·H·W (3072 on CIFAR10). The useful λ_EWC depends on the Fisher's
                           scale: on the small digits net λ ≥ 1e-3 pins the model (DDPM/configs/digits).
Setup fails before anything is written when `fisher` is unset, missing, or keyed differently from the
model's trainable parameters (ErasediffError naming the file and keys).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import torch
from annotated_types import Ge, Interval
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..config import RunConfig, dump_config
from ..data import InfiniteBatches, images_of_classes
from ..errors import ConfigError, ErasediffError
from ..files import fix_mode
from ..losses import denoising_loss
from . import register
from .base import Method, MethodData, TrainState

if TYPE_CHECKING:
    from ..backbones.base import Backbone
    from ..run import Run


@dataclass(frozen=True)
class SelectiveAmnesiaConfig:
    name: str = "selective_amnesia"
    #: safetensors file of the Fisher diagonal (the `fisher` command writes it); required when the run is built
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

    def check_run(self, run: RunConfig, path: str) -> None:
        """Checks against the other sections (RunConfig.validate calls this)."""
        T = run.diffusion.num_train_timesteps
        if self.fisher_timesteps > T:
            raise ConfigError(f"config key '{path}.fisher_timesteps' must be <= diffusion.num_train_timesteps = {T} "
                              f"(got {self.fisher_timesteps})")


# ------------------------------------------------------------ per-parameter files (Fisher, SalUn mask)
def require_file(path: Optional[str], key: str, command: str) -> Path:
    """The file named by config key `method.<key>`; ErasediffError when unset or absent."""
    if path is None:
        raise ConfigError(
            f"config key 'method.{key}' is not set: compute the file with the '{command}' command on this config, "
            f"then pass --set method.{key}=<file>"
        )
    p = Path(path)
    if not p.is_file():
        raise ErasediffError(f"method.{key} file not found: {path} (create it with the '{command}' command)")
    return p


def load_param_file(path: Path, key: str, state: TrainState) -> list[torch.Tensor]:
    """Tensors of a file keyed by parameter name, in `state.params` order, on their device (float32).

    The keys must be exactly `state.param_names` with matching shapes (ErasediffError otherwise).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            expected = set(state.param_names)
            if keys != expected:
                missing, unexpected = sorted(expected - keys), sorted(keys - expected)
                raise ErasediffError(
                    f"method.{key} file {path} does not match the model's trainable parameters: "
                    f"{len(missing)} missing (first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})"
                )
            tensors = {n: f.get_tensor(n) for n in state.param_names}
    except SafetensorError as exc:
        raise ErasediffError(f"method.{key} file {path} is not a readable safetensors file: {exc}") from None
    out = []
    for name, p in zip(state.param_names, state.params):
        t = tensors[name]
        if t.shape != p.shape:
            raise ErasediffError(
                f"method.{key} file {path}: '{name}' has shape {tuple(t.shape)}, the parameter {tuple(p.shape)}"
            )
        out.append(t.to(p.device, torch.float32))
    return out


def fresh_output(out_path: str | Path) -> Path:
    """`out_path` as a Path; ErasediffError if it exists (outputs are never overwritten)."""
    out = Path(out_path)
    if out.exists():
        raise ErasediffError(f"output file {out} already exists (results are never overwritten): choose another path")
    return out


def save_param_file(out: Path, tensors: dict[str, torch.Tensor], cfg: RunConfig, kind: str) -> None:
    """Write the per-parameter tensors with the resolved config in the metadata; never overwrite.

    Written under a temporary name, then hard-linked to `out`: the link fails if `out` appeared in the
    meantime (another process), so no file is ever replaced or half-written.
    """
    fresh_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": f"erasediff-{kind}-v1", "config": dump_config(cfg)}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp), metadata=meta)
        fix_mode(tmp)
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise ErasediffError(f"output file {out} appeared while it was computed (another process?): "
                                 "results are never overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)


def prepare_model_and_data(cfg: RunConfig, out: Path) -> Run:
    """Model (raw weights, EMA shadow), backbone and dataset of `cfg` through `loop.build_run`, writing nothing.

    The method is not set up (`setup_method=False`): SA / SalUn setup reads the very file being computed.
    """
    from ..build import build_run  # late: building imports this package

    return build_run(cfg, setup_method=False)


def sample_shape(cfg: RunConfig) -> tuple[int, int, int]:
    """(C, H, W) of the model's images, as the loop's sample grids use."""
    size = cfg.data.image_size or cfg.model.arch.sample_size
    return cfg.model.arch.in_channels, size, size


def generate_classes(state: TrainState, classes: list[int], n_per_class: int, progress: bool = True):
    """`n_per_class` samples of each class with the config's sampler, EMA weights if configured.

    Returns (images (N, C, H, W) in [-1, 1] on the CPU, labels (N,) int64).
    """
    from ..samplers import sample_classes  # late: keeps config validation free of the diffusers import

    cfg = state.cfg
    ctx = state.ema.swapped() if state.ema is not None and cfg.sample.use_ema else nullcontext()
    with ctx:
        return sample_classes(state.backbone, state.model, classes, n_per_class, sample_shape(cfg), cfg.sample, progress)


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
) -> list[torch.Tensor]:
    """Diagonal empirical Fisher F_i = (1/N) Σ_n (s · ∂/∂θ_i Σ_{t∈timesteps} ℓ_n,t)², s = T / len(timesteps).

    images: (N, C, H, W) (moved to the backbone's device one at a time); conds: N conditions (a tensor
    with leading dim N); timesteps: (n_t,) int64. One fresh ε per (sample, t); the timesteps of one
    sample go through the network in `chunks` batches whose gradients are summed before squaring.
    ℓ_n,t = ‖ε − ε_θ(x_t, t, c̃)‖² summed ("sum") or averaged ("mean") over pixels. Returns float32
    tensors shaped like `params`. Call with the model in the mode wanted (SA: eval).
    """
    scale = backbone.num_timesteps / len(timesteps)
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for n in tqdm(range(images.shape[0]), desc="Fisher", unit="sample", disable=not progress):
        x0 = images[n : n + 1].to(backbone.device)  # (1, C, H, W)
        c = conds[n : n + 1]
        grad_sum = [torch.zeros_like(f) for f in fisher]
        for ts in torch.chunk(timesteps, chunks):
            b = ts.shape[0]
            eps = torch.randn((b, *x0.shape[1:]), generator=generator, device=generator.device).to(x0.device)
            cond = backbone.drop_condition(c.expand(b, *c.shape[1:]), cond_drop, generator)
            pred = backbone.predict(model, backbone.add_noise(x0.expand_as(eps), eps, ts), ts, cond)
            per_t = (eps - pred).square().flatten(1)  # (b, C·H·W)
            loss = scale * (per_t.sum(1) if reduction == "sum" else per_t.mean(1)).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for acc, g in zip(grad_sum, grads):
                if g is not None:
                    acc += g.float()
        for f, g in zip(fisher, grad_sum):
            f += g.square()
    return [f / images.shape[0] for f in fisher]


def compute_fisher(cfg: RunConfig, out_path: str | Path, progress: bool = True) -> dict[str, Any]:
    """Compute SA's Fisher diagonal for `cfg` (a selective_amnesia config) and write it to `out_path`.

    Loads the model like a run would (`model.pretrained`, raw weights for the gradients), draws the
    Fisher samples (`method.fisher_source`), and writes ONLY `out_path`: safetensors keyed by the
    trainable parameter names, metadata = the resolved config. Refuses an existing `out_path`.
    Returns a summary (path, samples, timesteps, parameters, seconds, mean).
    """
    if not isinstance(cfg.method, SelectiveAmnesiaConfig):
        raise ConfigError(f"the Fisher is computed from a selective_amnesia config (method.name is '{cfg.method.name}')")
    m, out, start = cfg.method, fresh_output(out_path), time.perf_counter()
    run = prepare_model_and_data(cfg, out)
    s = run.state
    timesteps = fisher_timestep_grid(s.backbone.num_timesteps, m.fisher_timesteps, s.backbone.device)
    classes = list(range(run.dataset.num_classes))
    if m.fisher_source == "generated":
        images, labels = generate_classes(s, classes, m.fisher_samples_per_class, progress)
    else:
        images, labels = images_of_classes(run.dataset, classes, m.fisher_samples_per_class)
    if m.fisher_input_range == "[0,1]":
        images = (images + 1) / 2  # SA's ToTensor() without the [-1, 1] rescale
    s.model.eval()  # SA: model.eval() (no dropout); label dropout stays (fisher_cond_drop)
    fisher = fisher_diagonal(
        s.backbone, s.model, s.params, images, s.backbone.condition_for_classes(labels), timesteps,
        chunks=m.fisher_chunks, cond_drop=m.fisher_cond_drop, reduction=m.fisher_reduction,
        generator=torch.Generator(device=s.generator.device).manual_seed(cfg.seed), progress=progress,
    )
    save_param_file(out, dict(zip(s.param_names, fisher)), cfg, "fisher")
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

    def __init__(self, cfg: SelectiveAmnesiaConfig):
        super().__init__(cfg)
        self.needs_remain = cfg.replay == "real"

    def setup(self, state: TrainState, data: MethodData) -> None:
        self.fisher_path = require_file(self.cfg.fisher, "fisher", "fisher")
        forget = list(state.cfg.data.forget_classes)
        if not forget:
            raise ConfigError("method 'selective_amnesia' needs the classes to forget: set data.forget_classes (e.g. [0])")
        if not state.backbone.conditional:
            raise ConfigError(
                f"method 'selective_amnesia' labels its surrogate images with the forget class: it needs a conditional "
                f"model (backbone '{state.cfg.model.backbone}' is not)"
            )
        self.fisher = load_param_file(self.fisher_path, "fisher", state)
        self.theta_star = [p.detach().clone() for p in state.params]  # θ*: raw weights at setup
        self.forget_classes = torch.tensor(forget, dtype=torch.long)
        self.replay = None
        if self.cfg.replay == "generated":
            remaining = [c for c in range(state.cfg.model.arch.num_classes) if c not in forget]
            images, labels = generate_classes(state, remaining, self.cfg.replay_samples_per_class, state.progress)
            self.replay = InfiniteBatches(
                TensorDataset(images, labels), torch.arange(len(labels)), state.cfg.data.batch_size,
                seed=state.cfg.seed * 2, device=state.backbone.device,
            )

    def surrogate_batch(self, state: TrainState, shape: torch.Size) -> tuple[torch.Tensor, Any]:
        """x_f ~ U[-1, 1] of `shape` (B, C, H, W), each labelled with a forget class drawn uniformly."""
        gen = state.generator
        x_f = torch.rand(shape, generator=gen, device=gen.device).to(state.backbone.device) * 2 - 1
        pick = torch.randint(len(self.forget_classes), (shape[0],), generator=gen, device=gen.device).cpu()
        return x_f, state.backbone.condition_for_classes(self.forget_classes[pick])

    def ewc_penalty(self, state: TrainState) -> torch.Tensor:
        """Σ_i F_i (θ_i − θ*_i)² over the trainable parameters (scalar, differentiable)."""
        return sum(((p - p0).square() * f).sum() for p, p0, f in zip(state.params, self.theta_star, self.fisher))

    def loss(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        bb, model = state.backbone, state.model
        x_r, c_r = bb.encode(remain if self.replay is None else next(self.replay))
        x_f, c_f = self.surrogate_batch(state, x_r.shape)
        loss_f, t = denoising_loss(bb, model, x_f, c_f, state.generator)  # standard Gaussian target, no dropout
        loss_r, _ = denoising_loss(bb, model, x_r, c_r, state.generator, t=t)  # same t, as SA
        ewc = self.ewc_penalty(state)
        total = loss_f + self.cfg.gamma * loss_r + self.cfg.lambda_ewc * ewc
        return total, {"loss": total.item(), "loss_f": loss_f.item(), "loss_r": loss_r.item(), "ewc": ewc.item()}

    def state_dict(self) -> dict:
        return {"replay": self.replay.state_dict()} if self.replay is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])
