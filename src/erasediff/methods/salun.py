"""SalUn (Fan et al., ICLR 2024): saliency-masked unlearning (docs/baselines.md "SalUn"; docs/peers.md "SalUn").

1. Mask (`compute_saliency_mask`, official `generate_mask`): on the raw weights, network in eval mode,
       g = Σ_{batches of D_f} clip(∇_θ L_mask),   m_i = 1 if |g_i| is among the top `mask_fraction`
   entries over ALL trainable parameters, else 0.
   L_mask = mean_batch Σ_pixels ‖ε − ε̃_θ(x_t, t, c_f)‖² with the classifier-free-guided prediction
   ε̃ = (1+w)·ε_θ(x_t, c_f) − w·ε_θ(x_t, ∅) (`mode='test'`, w = `mask_guidance` = 2 in the SA
   convention), antithetic t, one pass over D_f by default (`mask_batches`; the incomplete last batch
   is dropped, as in the loop's iterators), every batch gradient clipped to global norm
   `mask_grad_clip` (official: config grad_clip 1) before it is summed.
   Exactly int(N·fraction) ones (ties broken by parameter order).
2. Unlearning (official `saliency_unlearn`), per step:
       L = L_f + α·L_r,   then  θ ← Adam(θ, m ⊙ clip(∇L))      (mask applied AFTER clipping)
   - `forget_loss: random_label` (official `--method rl`): L_f = ‖sg[ε_θ(x_t, t, c')] − ε_θ(x_t, t, c̃_f)‖²
     (`losses.random_label_target_loss`), c' = the backbone's other condition: a uniformly random
     other class. The official code uses the fixed (c_f + 1) mod 10; that choice needs the class id
     behind a condition, which the backbone adapter does not expose (a prompt for SD), so it is NOT
     offered. c̃_f: label dropout `forget_cond_drop` (official: 0.1, the model's train-mode default;
     the official pseudo branch is dropped too, ours is not).
   - `forget_loss: neggrad` (official `--method ga`): L_f = −‖ε − ε_θ(x_t, t, c̃_f)‖².
   - L_r: ε-loss on D_r with label dropout `remain_cond_drop` (official: 0.1, the loss default;
     docs/peers.md "SalUn").
   - α: `alpha`, default 1.0 (the official `--alpha` default, what the EraseDiff code ran). SalUn's
     authors recommend α = 1e-3 for DDPM (issue #19, UNCONFIRMED which the paper used). Reductions
     matter: SalUn's L_r sums over pixels, so their α corresponds to α·C·H·W here (1e-3 -> ~3.07 on
     CIFAR10); the EraseDiff code's L_r is mean-reduced like ours, so its α = 1 is ours.
   - Adam with weight_decay 0 (official): masked-out weights then never move; with AdamW/decay they decay.
The mask file is the method's declared artifact (`Method.artifacts`, docs/architecture.md): `erasediff
precompute` computes it into `method.mask` (unset: <artifacts dir>/salun_mask.safetensors) from the same
config before `unlearn`. A run stops before anything is written when the file is missing, keyed
differently from the model's trainable parameters, or holds values other than 0/1 (ErasediffError).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
from annotated_types import Ge, Gt, Interval
from tqdm.auto import tqdm

from ..checkpoint import fresh_path, save_param_file
from ..config import MethodConfig, RunConfig, dump_config
from .. import shard
from ..distributed import processes
from ..errors import ConfigError, ErasediffError
from ..shard import ShardedGenerator
from ..losses import denoising_loss, random_label_target_loss
from . import register
from .base import Artifact, Method, MethodData, TrainState


class SalUnConfig(MethodConfig):
    name: Literal["salun"] = "salun"
    #: safetensors file of the {0,1} mask (`precompute` writes it); null = <artifacts dir>/salun_mask.safetensors
    mask: Optional[str] = None
    alpha: Annotated[float, Ge(0)] = 1.0
    forget_loss: Literal["random_label", "neggrad"] = "random_label"
    forget_cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    remain_cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    # --- mask computation (`compute_saliency_mask`) ---
    mask_fraction: Annotated[float, Interval(gt=0, le=1)] = 0.5
    mask_batches: Optional[Annotated[int, Ge(1)]] = None  # None = one pass over D_f
    mask_guidance: Annotated[float, Ge(0)] = 2.0  # w of the "sa" guidance convention
    mask_grad_clip: Optional[Annotated[float, Gt(0)]] = 1.0


def top_fraction_mask(scores: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """{0,1} bool masks shaped like `scores` (each >= 0, e.g. |g|): exactly K = int(N·fraction) ones at the
    globally largest scores, ties at the K-th value taken in parameter order (what a stable descending sort
    of the concatenated scores selects).

    Memory: no concatenation and no sort of all N scores (at SD v1.4 size, N = 813M, a sort needs ~10 GB
    of indices and copies on top of the model). The K-th largest value is found by bisection on the scores'
    float32 bit patterns (for non-negative floats, integer order = float order): 31 counting passes over
    the tensors, each allocating one temporary the size of the largest tensor.
    """
    n = sum(s.numel() for s in scores)
    k = int(n * fraction)
    if k == 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    # float32 bit patterns: views of the scores themselves (no copy) when they are float32 and contiguous
    bits = [s.detach().float().contiguous().view(torch.int32) for s in scores]
    if any(bool((b < 0).any()) for b in bits):
        raise ValueError("top_fraction_mask needs scores >= 0 (e.g. |g|)")

    def at_least(v: int) -> int:  # how many scores have bit pattern >= v
        return int(sum(int((b >= v).sum()) for b in bits))

    lo, hi = 0, 0x7F800000  # [0, +inf]; invariant: at_least(lo) >= k > at_least(hi + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if at_least(mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    masks = [b > lo for b in bits]  # everything strictly above the K-th value
    ties = k - int(sum(int(m.sum()) for m in masks))  # how many of the scores equal to it are kept, in order
    for m, b in zip(masks, bits):
        if ties <= 0:
            break
        equal = (b == lo).flatten()
        take = equal & (equal.cumsum(0) <= ties)
        m.view(-1)[take] = True
        ties -= int(take.sum())
    return masks


def compute_saliency_mask(cfg: RunConfig, out_path: str | Path, progress: bool = True) -> dict[str, Any]:
    """Compute SalUn's weight-saliency mask for `cfg` (a salun config) and write it to `out_path`.

    The method's `mask` artifact. Builds the model and the D_f batches as a run of `cfg` starts from
    them (`prepare`: raw weights, the loop's forget iterator), runs `mask_batches` forget batches
    (default one pass over D_f) through the guided loss of the module docstring, and writes ONLY
    `out_path`: safetensors of bool {0,1} tensors keyed by the trainable parameter names, metadata = the
    resolved config. Refuses an existing `out_path`. Returns a summary (path, batches, ones, parameters,
    seconds).
    """
    from ..prepare import (  # late: configs load without diffusers
        prepare_data,
        prepare_model,
    )

    if not isinstance(cfg.method, SalUnConfig):
        raise ConfigError(f"the saliency mask is computed from a salun config (method.name is '{cfg.method.name}')")
    if not cfg.data.forget_classes:
        raise ConfigError("the saliency mask needs the classes to forget: set data.forget_classes (e.g. [0])")
    m, out, start = cfg.method, fresh_path(out_path), time.perf_counter()
    procs = processes(cfg.device)  # N processes split every batch (docs/distributed.md)
    device, progress = procs.device, progress and procs.is_main
    torch.manual_seed(cfg.seed)  # a random init (no model.pretrained) is the one a run of cfg starts from
    _, batches, _ = prepare_data(cfg, device, forget=True, remain=False,  # the loop's D_f iterator
                                 part=(procs.rank, procs.world))
    s = prepare_model(cfg, device)
    bb = s.backbone
    n_batches = m.mask_batches or batches.batches_per_epoch
    guided = cfg.sample.model_copy(update={"guidance": m.mask_guidance, "guidance_convention": "sa"})
    gen = ShardedGenerator(device, procs.rank, procs.world).manual_seed(cfg.seed)
    grad_sum = [torch.zeros_like(p, dtype=torch.float32) for p in s.params]
    s.model.eval()  # official: model.eval() for the mask
    for _ in tqdm(range(n_batches), desc="saliency mask", unit="batch", disable=not progress):
        x0, c = bb.encode(next(batches))  # (B, C, H, W), B conditions
        t = bb.sample_timesteps(x0.shape[0], gen)
        eps = shard.randn(x0.shape, gen).to(x0.device)
        pred = bb.guided_eps(s.model, bb.add_noise(x0, eps, t), t, c, guided)  # with gradients (no inference_mode)
        loss = (eps - pred).square().flatten(1).sum(1).mean()  # Σ pixels, mean over the batch (SA loss)
        grads = [torch.zeros_like(p) if g is None else g
                 for g, p in zip(torch.autograd.grad(loss, s.params, allow_unused=True), s.params)]
        procs.mean_(grads)  # the global batch's gradient (the loss is a batch mean), before clipping
        if m.mask_grad_clip is not None:  # as clip_grad_norm_ on the model's .grad
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            torch._foreach_mul_(grads, torch.clamp(m.mask_grad_clip / (norm + 1e-6), max=1.0))
        for acc, g in zip(grad_sum, grads):
            acc += g.float()
    mask = top_fraction_mask([g.abs_() for g in grad_sum], m.mask_fraction)  # in place: no second copy
    if procs.is_main:
        save_param_file(out, dict(zip(s.param_names, mask)), dump_config(cfg), "saliency-mask")
    procs.barrier()  # the file exists for every process once this returns
    return {
        "path": str(out),
        "batches": n_batches,
        "ones": int(sum(k.sum() for k in mask)),
        "parameters": int(sum(k.numel() for k in mask)),
        "seconds": round(time.perf_counter() - start, 2),
    }


@register
class SalUn(Method):
    name = "salun"
    Config = SalUnConfig
    artifacts = (Artifact(key="mask", default="salun_mask.safetensors", compute=compute_saliency_mask,
                          description="SalUn's weight-saliency mask of model.pretrained"),)

    def setup(self, state: TrainState, data: MethodData) -> None:
        if self.cfg.forget_loss == "random_label" and not state.backbone.conditional:
            raise ConfigError(
                f"method.forget_loss 'random_label' needs a conditional model (backbone '{state.cfg.model.backbone}' "
                "has no other class); valid here: neggrad"
            )
        self.mask = state.load_param_file(self.cfg.mask, "mask")  # present: build_run checked the artifact
        bad = [n for n, k in zip(state.param_names, self.mask) if not bool(((k == 0) | (k == 1)).all())]
        if bad:
            raise ErasediffError(f"method.mask file {self.cfg.mask} holds values other than 0/1 (first: {bad[:3]})")

    def loss(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        bb, model, gen, cfg = state.backbone, state.model, state.generator, self.cfg
        x_r, c_r = bb.encode(remain)
        loss_r, _ = denoising_loss(bb, model, x_r, c_r, gen, cond_drop=cfg.remain_cond_drop)
        x_f, c_f = bb.encode(forget)
        t_f = bb.sample_timesteps(x_f.shape[0], gen)  # its own t, as the official code
        if cfg.forget_loss == "random_label":
            loss_f = random_label_target_loss(bb, model, x_f, c_f, t_f, gen, cond_drop=cfg.forget_cond_drop)
        else:
            loss_f = -denoising_loss(bb, model, x_f, c_f, gen, t=t_f, cond_drop=cfg.forget_cond_drop)[0]
        total = loss_f + cfg.alpha * loss_r
        return total, {"loss": total.item(), "loss_f": loss_f.item(), "loss_r": loss_r.item()}

    def update(self, state: TrainState, forget, remain) -> dict[str, float]:
        """zero_grad, loss, backward, clip, grad ⊙ mask (after clipping, as the official code), step."""
        state.optimizer.zero_grad(set_to_none=True)
        parts = state.accumulate(self.loss, forget, remain)

        @torch.no_grad()
        def apply_mask() -> None:
            for p, k in zip(state.params, self.mask):
                if p.grad is not None:
                    p.grad.mul_(k)

        parts["grad_norm"] = state.clip_and_step(after_clip=apply_mask, parts=parts)
        return parts
