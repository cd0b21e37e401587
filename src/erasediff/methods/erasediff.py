"""EraseDiff (Wu et al., arXiv 2401.05779): unlearning as a value-function constrained problem.

Problem (Eq. 4; docs/method.md "The problem"):   min_θ L_r(θ)   s.t.   q(θ) := L_f(θ) − min_φ L_f(φ) ≤ 0
- L_r(θ) = E_{D_r}‖ε − ε_θ(x_t, t, c)‖²                       (Eq. 1–2, remaining data)
- L_f(θ) = E_{D_f}‖ε_f − ε_θ(x̃_t, t, c_f)‖²                   (`target`; docs/method.md "Forgetting targets"):
    `uniform`      ε_f ~ U[0,1) noises the input and is the target       (paper; DDPM default)
    `random_label` ε_f = sg[ε_θ(x_t, t, c')], c' another condition       (official code HEAD;
                   for SD, where c' is the surrogate prompt given by the backbone)

Algorithm 1, as implemented by `EraseDiff.update` (one call = one outer step i):

    every `block_size` outer steps (official S-block):                  -> _inner_loop
      line 2   φ⁰ ← θ_i                       snapshot of the trainable parameters only
      line 3   φ^{k+1} ← φ^k − ζ∇L_f(φ^k), k < K                        K = `inner_steps`
      line 4   record f* = L_f(φ^K) (a detached number), θ ← φ⁰ in place
    line 5   q̂(θ) = L_f(θ) − f*                                          (constant f*: ∇q̂ = ∇L_f)
    line 6   g_r = ∇L_r(θ_i; D_r batch),  g_q = ∇q̂(θ_i; D_f batch)
    line 7   λ_i = `lambda_value` (fixed, paper Remark: 0.1)
                 or max(η − ⟨g_r, g_q⟩/‖g_q‖², 0)        (`paper`, Theorem 1)
                 or max(η − cos(g_r, g_q), 0)              (`cosine`, the official code's variant)
    line 8   θ_{i+1} ← θ_i − ζ(g_r + λ_i g_q)        via the loop's optimiser, with gradient clipping

Paper vs official code, each behind an option (docs/method.md "Options: paper, official code, default"):
- `inner_optimizer`: "shared" (default, official code) runs the inner steps with the outer Adam, so its
  moments carry the erasure gradients into the next outer steps — the only lasting effect of the inner
  loop in the code; "separate" uses plain SGD with step ζ = `inner_lr` as in Alg. 1 line 3.
- `phi_value`: "inner_mean" (default, code's `meter.avg`) = mean L_f over the last pass over D_f during
  the inner loop; "final" = L_f evaluated at φ^K on a fresh forget batch (paper). Either way f* is a
  constant and only changes the logged q, never the update (∇q̂ = ∇L_f).
- `shared_timesteps`: reuse the D_r batch's t for the D_f batch. The official uniform-noise code draws
  its own timesteps for the forget batch; the reuse came only with its random-label rewrite. So the
  default (null) resolves to false for `target: uniform` and true for `random_label`
  (docs/method.md "Shared timesteps"); the resolved value is what config.resolved.yaml records.
- `q_gate`: experimental, λ = 0 when q̂ ≤ 0 (UNCONFIRMED in the paper, docs/method.md "Paper-vs-code choices" 2).
The official code's bugs are not reproduced: `criteria` is defined (MSE), the random label is always a
different class, the automatic λ uses `allow_unused` gradients over the trained parameters only, and
the inner value is stored as a float (the code kept graphs alive in its meter).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from annotated_types import Ge, Gt, Interval
from pydantic import model_validator

from .. import shard
from ..config import MethodConfig, RunConfig
from ..errors import ConfigError
from ..losses import denoising_loss, random_label_target_loss, uniform_target_loss
from . import register
from .base import Method, MethodData, TrainState


class EraseDiffConfig(MethodConfig):
    name: Literal["erasediff"] = "erasediff"
    target: Literal["uniform", "random_label"] = "uniform"
    lambda_mode: Literal["fixed", "paper", "cosine"] = "fixed"
    lambda_value: Annotated[float, Ge(0)] = 0.1  # λ of lambda_mode fixed
    eta: float = 0.1  # η of lambda_mode paper / cosine: any finite value
    inner_steps: Annotated[int, Ge(0)] = 2
    inner_optimizer: Literal["shared", "separate"] = "shared"
    inner_lr: Optional[Annotated[float, Gt(0)]] = None
    block_size: Annotated[int, Ge(1)] = 36
    phi_value: Literal["inner_mean", "final"] = "inner_mean"
    shared_timesteps: Optional[bool] = None  # null: false for uniform, true for random_label (docstring)
    q_gate: bool = False
    remain_cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    forget_cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.0

    def check_run(self, run: RunConfig) -> None:
        if run.train.grad_accum_steps > 1 and (self.lambda_mode != "fixed" or self.q_gate):
            why = (f"lambda_mode '{self.lambda_mode}' computes λ from the full gradients g_r and g_q of the step"
                   if self.lambda_mode != "fixed" else "q_gate decides λ from the step's whole L_f before its backward")
            raise ValueError(f"train.grad_accum_steps is {run.train.grad_accum_steps} but method.{why}, which "
                             "micro-batches cannot give: set train.grad_accum_steps=1 (valid with lambda_mode fixed "
                             "and q_gate false: any)")

    @model_validator(mode="after")
    def _resolve_shared_timesteps(self) -> "EraseDiffConfig":
        if self.shared_timesteps is None:  # frozen model: the resolved default is set once, here
            object.__setattr__(self, "shared_timesteps", self.target == "random_label")
        return self


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def lambda_paper(g_r: list[torch.Tensor], g_q: list[torch.Tensor], eta: float) -> float:
    """Theorem 1: λ = max(η − ⟨g_r, g_q⟩ / ‖g_q‖², 0); 0 when g_q = 0 (constraint already flat)."""
    nq = float(_dot(g_q, g_q))
    if nq == 0.0:
        return 0.0
    return max(eta - float(_dot(g_r, g_q)) / nq, 0.0)


def lambda_cosine(g_r: list[torch.Tensor], g_q: list[torch.Tensor], eta: float) -> float:
    """Official code: λ = max(η − ⟨g_r, g_q⟩ / (‖g_r‖‖g_q‖ + 1e-8), 0); 0 when g_q = 0."""
    nq = float(_dot(g_q, g_q)) ** 0.5
    if nq == 0.0:
        return 0.0
    nr = float(_dot(g_r, g_r)) ** 0.5
    return max(eta - float(_dot(g_r, g_q)) / (nr * nq + 1e-8), 0.0)


@register
class EraseDiff(Method):
    name = "erasediff"
    Config = EraseDiffConfig

    def setup(self, state: TrainState, data: MethodData) -> None:
        if self.cfg.target == "random_label" and not state.backbone.conditional:
            raise ConfigError(
                "method.target 'random_label' needs a conditional model (no other class exists for "
                f"backbone '{state.cfg.model.backbone}'); valid targets here: uniform"
            )
        if self.cfg.target == "random_label":
            # ask for the other condition once now, so a missing one (SD without model.sd.surrogate_prompt)
            # fails in build_run, before the run directory is written; a throwaway generator leaves the run's RNG alone
            probe = torch.Generator(device=state.generator.device).manual_seed(0)
            state.backbone.other_condition(state.backbone.null_condition(1), probe)
        self.forget_iter = data.forget
        self.since_inner = 0  # outer steps taken since the last inner loop
        self.phi = float("nan")  # f* = L_f(φ^K), a detached number
        # The inner loop draws its noise from its own generator, so the outer steps see the same
        # noise stream whatever K is (with λ = 0 and a separate optimiser an outer step is exactly a
        # Finetune step on the same batch; tested).
        # Like the run's generator it gives each process its share of every batch's draws (shard.py).
        index, count = shard.part(state.generator)
        self.inner_gen = shard.ShardedGenerator(state.generator.device, index, count).manual_seed(state.cfg.seed + 7_000_003)
        self.snapshot = [p.detach().clone() for p in state.params]
        if self.cfg.inner_optimizer == "shared":
            self.inner_opt = state.optimizer
        else:
            self.inner_opt = torch.optim.SGD(state.params, lr=self.cfg.inner_lr or state.cfg.train.lr)

    # ----------------------------------------------------------------------------- forgetting loss
    def forget_loss(
        self, state: TrainState, x0: torch.Tensor, cond, t: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """L_f on one D_f batch. x0: (B,C,H,W); t: (B,) int64 in [0, T) or None (fresh antithetic draw)."""
        if t is None:
            t = state.backbone.sample_timesteps(x0.shape[0], generator)
        if self.cfg.target == "uniform":
            return uniform_target_loss(state.backbone, state.model, x0, cond, t, generator)
        return random_label_target_loss(
            state.backbone, state.model, x0, cond, t, generator, cond_drop=self.cfg.forget_cond_drop
        )

    # --------------------------------------------------------------------- Alg. 1 lines 2-4
    def _inner_objective(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        x_f, c_f = state.backbone.encode(forget)
        loss = self.forget_loss(state, x_f, c_f, None, self.inner_gen)
        return loss, {"loss_f_inner": loss.item()}

    def _inner_loop(self, state: TrainState) -> None:
        # line 2: φ⁰ ← θ (in place, trainable parameters only; no second model)
        torch._foreach_copy_(self.snapshot, [p.detach() for p in state.params])
        losses = []
        try:
            # line 3: K descent steps on L_f only (the official code does not clip inner steps); each on the
            # global forget batch: gradients averaged over the processes, so every process keeps the same φ
            for _ in range(self.cfg.inner_steps):
                self.inner_opt.zero_grad(set_to_none=True)
                parts = state.accumulate(self._inner_objective, next(self.forget_iter), None, self.inner_gen)
                state.finish_gradients(parts, optimizer=self.inner_opt)  # NonFiniteStep before a bad inner step
                state.optimizer_step(self.inner_opt)
                losses.append(parts["loss_f_inner"])
            # line 4: f* = L_f(φ^K)
            if self.cfg.phi_value == "final" or not losses:
                x_f, c_f = state.backbone.encode(next(self.forget_iter))
                with torch.no_grad(), state.autocast():
                    phi = self.forget_loss(state, x_f, c_f, None, self.inner_gen).item()
                self.phi = state.procs.mean_values({"phi": phi})["phi"]
            else:
                last_pass = losses[-max(1, min(len(losses), self.forget_iter.batches_per_epoch)) :]
                self.phi = sum(last_pass) / len(last_pass)
        finally:
            # line 4: θ ← φ⁰, also when a non-finite inner step ends the loop early (train.nonfinite)
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in state.params], self.snapshot)
            state.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------- one outer step
    def _losses(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, torch.Tensor]:
        """Line 6 (losses): (L_r on the D_r batch, L_f on the D_f batch), scalars with graph."""
        backbone, cfg, gen = state.backbone, self.cfg, state.generator
        x_r, c_r = backbone.encode(remain)
        x_f, c_f = backbone.encode(forget)
        n_r, n_f = shard.global_rows(x_r.shape[0], gen), shard.global_rows(x_f.shape[0], gen)  # global B_r, B_f
        with shard.whole(gen):  # the global batch's t: the D_f batch may reuse its first B_f entries
            t_all = backbone.sample_timesteps(n_r, gen)  # (B_r,) int64 in [0, T)
        loss_r, _ = denoising_loss(backbone, state.model, x_r, c_r, gen, t=shard.local_rows(t_all, gen),
                                   cond_drop=cfg.remain_cond_drop)
        t_f = shard.local_rows(t_all[:n_f], gen) if cfg.shared_timesteps and n_f <= t_all.shape[0] else None
        return loss_r, self.forget_loss(state, x_f, c_f, t_f, gen)

    def _fixed_objective(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        """Line 8 with fixed λ: ∇(L_r + λ q̂) = g_r + λ g_q in one backward (f* is a constant)."""
        loss_r, loss_f = self._losses(state, forget, remain)
        return loss_r + self.cfg.lambda_value * loss_f, {"loss_r": loss_r.item(), "loss_f": loss_f.item()}

    def update(self, state: TrainState, forget, remain) -> dict[str, float]:
        if self.since_inner % self.cfg.block_size == 0:
            self._inner_loop(state)
        self.since_inner += 1
        cfg, procs = self.cfg, state.procs

        state.optimizer.zero_grad(set_to_none=True)
        synced = False
        if cfg.lambda_mode == "fixed" and not cfg.q_gate:
            parts = state.accumulate(self._fixed_objective, forget, remain)  # over train.grad_accum_steps
            lam = cfg.lambda_value
        else:  # λ depends on this step's global L_f or gradients (no gradient accumulation: EraseDiffConfig)
            loss_r, loss_f = self._losses(state, forget, remain)
            parts = {"loss_r": loss_r.item(), "loss_f": loss_f.item()}
            # line 5: q̂(θ) = L_f(θ) − f* on the global batch (f* constant)
            q = procs.mean_values({"loss_f": parts["loss_f"]})["loss_f"] - self.phi
            if cfg.lambda_mode == "fixed":
                lam = 0.0 if q <= 0 else cfg.lambda_value
                state.backward(loss_r + lam * loss_f)
            else:
                # line 6 (gradients) over the trained parameters only, zeros where unused: e.g. the null-class
                # row is not in L_r's graph when remain_cond_drop = 0 (the code's crash, docs/method.md "Theorem 1
                # and the λ rules"); averaged over the processes: λ needs the global g_r and g_q (autograd.grad
                # is no .backward() that a data-parallel wrapper would average)
                g_r = state.grad(loss_r, retain_graph=True)
                g_q = state.grad(loss_f)
                procs.mean_(g_r + g_q)
                # line 7: Theorem 1 (paper) or the code's cosine rule; the same λ on every process
                lam = (lambda_paper if cfg.lambda_mode == "paper" else lambda_cosine)(g_r, g_q, cfg.eta)
                if cfg.q_gate and q <= 0:
                    lam = 0.0
                # line 8: δ = g_r + λ g_q, written straight into .grad (no third backward), already global
                for p, a, b in zip(state.params, g_r, g_q):
                    p.grad = a + lam * b
                synced = True
        grad_norm = state.clip_and_step(parts=parts, synced=synced)  # parts: now the global losses
        logs = {"loss_r": parts["loss_r"], "loss_f": parts["loss_f"], "q": parts["loss_f"] - self.phi, "lambda": lam,
                "grad_norm": grad_norm, "phi": self.phi}
        return {**logs, **({"amp_skipped": 1.0} if "amp_skipped" in parts else {})}

    def state_dict(self) -> dict:
        return {"since_inner": self.since_inner, "phi": self.phi, "inner_gen": self.inner_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.since_inner = int(state["since_inner"])
        self.phi = float(state["phi"])
        self.inner_gen.set_state(state["inner_gen"])
