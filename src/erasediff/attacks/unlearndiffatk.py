"""UnlearnDiffAtk (Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still
Easy to Generate Unsafe Images ... For Now", ECCV 2024; code OPTML-Group/Diffusion-MU-Attack, `text_grad`).
docs/robustness.md "UnlearnDiffAtk".

The unlearned model is its own classifier: k adversarial tokens are prepended to the prompt and chosen so
that the UNLEARNED model's denoising loss on a target image of the concept (the ORIGINAL model's image of
the prompt, same seed) is minimal, i.e. so that the unlearned model again "explains" the concept image
from the attacked prompt. Per prompt:

  θ ∈ Δ^{k×V}   one distribution over the V vocabulary tokens per adversarial position, uniform at start
  for t in the timestep schedule (n values T/(2n), T/(2n) + T/n, ..., ascending: the official `sequential`):
      repeat `iterations` times:
          o ~ one-hot samples of θ (one token per row), straight-through gradient clipped to [-1, 1]
              (the official STERandSelect: backward = hardtanh)
          e = o · E             (k, D) token embeddings, E the text encoder's token table
          L = ‖ε − ε_θu(√ᾱ_t z0 + √(1−ᾱ_t) ε, t, τ([sot, e, prompt, eot]))‖²,  ε ~ N(0, I) fresh each time
          θ ← Adam(lr, weight decay) step on ∇_θ L, then θ ← Π_Δ(θ) row by row (projection onto the simplex)
      the attacked prompt = argmax tokens of θ + the prompt's tokens; with `stop_on_success`, its images are
      generated and judged now and the attack stops at the first success (the official protocol)

Defaults are the official nudity/object configs (k 5, 40 iterations, lr 0.01, weight decay 0.1, 50
timesteps, prefix insertion, l2). Ours differs in: the simplex projection is the exact sort-based one
(the official bisection approximates it to 1e-5), <|startoftext|> / <|endoftext|> get probability 0 (the
official code can sample them), the noise comes from the prompt's own generator (the official code uses
the global RNG), and every target image of the prompt is used (the official: one; `robustness`'s
targets are one per prompt by default).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from ..config import AttackConfig
from ..errors import ConfigError
from . import register
from .base import Adversarial, Attack


def project_to_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every row of x (R, V) onto {p ≥ 0, Σp = 1} (Duchi et al. 2008, sort-based)."""
    u, _ = torch.sort(x, dim=1, descending=True)
    css = u.cumsum(dim=1) - 1.0
    k = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
    rho = ((u - css / k) > 0).to(x.dtype).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last index where positive
    tau = css.gather(1, rho) / (rho + 1).to(x.dtype)
    return (x - tau).clamp_min(0.0)


class _SampleOneHot(torch.autograd.Function):
    """One-hot samples (R, V) of the rows of θ (R, V); backward: the incoming gradient clipped to [-1, 1]."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.multinomial(theta.detach().cpu().float(), 1, generator=generator).view(-1)
        return F.one_hot(idx, theta.shape[1]).to(theta.device, theta.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return F.hardtanh(grad), None


def timestep_schedule(n: int, T: int) -> list[int]:
    """The official `sampled_t`: n timesteps starting at T // n // 2, spaced T // n (n = 50, T = 1000: 10, 30, ..., 990)."""
    step = max(T // n, 1)
    return list(range(T // n // 2, T, step))[:n]


@register
class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    needs_targets = True

    class Config(AttackConfig):
        """k: adversarial tokens; insertion: where they go (prefix: the official `prefix_k`, suffix:
        `suffix_k`); timesteps: n of the schedule; iterations: optimiser steps per timestep; lr, weight_decay:
        Adam's; criterion: l2 (the official default) or l1; stop_on_success: judge after every timestep and
        stop at the first success (official); false: run the whole schedule and judge once."""

        name: Literal["unlearndiffatk"] = "unlearndiffatk"
        k: Annotated[int, Ge(1)] = 5
        insertion: Literal["prefix", "suffix"] = "prefix"
        timesteps: Annotated[int, Ge(1)] = 50
        iterations: Annotated[int, Ge(1)] = 40
        lr: Annotated[float, Gt(0)] = 0.01
        weight_decay: Annotated[float, Ge(0)] = 0.1
        criterion: Literal["l2", "l1"] = "l2"
        stop_on_success: bool = True

    def check_tokenizer(self, tokenizer) -> None:
        L = tokenizer.model_max_length
        if self.cfg.k > L - 2:
            raise ConfigError(f"attack.k must be <= {L - 2} (the tokenizer's {L} tokens less <|startoftext|> and "
                              f"<|endoftext|>); got {self.cfg.k}")

    def layout(self, ctx, prompt_tokens: list[int]) -> tuple[slice, callable]:
        """(positions of the k adversarial tokens in the (L,) ids, tokens -> full ids); the prompt is cut so
        that sot + k + prompt + eot fit L."""
        k, L = self.cfg.k, ctx.tokenizer.model_max_length
        body = prompt_tokens[: max(L - 2 - k, 0)]
        if self.cfg.insertion == "prefix":
            return slice(1, 1 + k), (lambda adv: ctx.assemble([*adv, *body]))
        return slice(1 + len(body), 1 + len(body) + k), (lambda adv: ctx.assemble([*body, *adv]))

    def loss(self, ctx, ids, base_embeds, where, adv_embeds, z0, t, noise) -> torch.Tensor:
        """The attack objective for adversarial token embeddings adv_embeds (k, D) at positions `where`."""
        embeds = torch.cat([base_embeds[: where.start], adv_embeds, base_embeds[where.stop:]])  # (L, D)
        return ctx.denoising_loss(z0, ctx.encode(ids, embeds), t, noise, self.cfg.criterion)

    def attack(self, ctx, row, oracle, generator) -> Adversarial:
        c = self.cfg
        start = time.perf_counter()
        z0 = ctx.target_latents(row)  # (n, 4, h, w)
        table = ctx.token_table.detach().float()  # (V, D)
        V = table.shape[0]
        allowed = torch.ones(V, dtype=torch.bool, device=table.device)
        allowed[list(ctx.special_ids)] = False
        where, full_ids = self.layout(ctx, ctx.prompt_tokens(ctx.tokenize(row.prompt)))
        ids = full_ids([0] * c.k)  # the adversarial positions' ids only mark where the embeddings go
        base_embeds = table[ids.to(table.device)]  # (L, D)
        theta = torch.zeros(c.k, V, device=table.device)
        theta[:, allowed] = 1.0 / int(allowed.sum())
        theta.requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=c.lr, weight_decay=c.weight_decay)
        losses, adv, rounds = [], None, 0
        for t_value in timestep_schedule(c.timesteps, ctx.num_train_timesteps):
            t = torch.full((len(z0),), t_value, dtype=torch.long, device=ctx.device)
            total = 0.0
            for _ in range(c.iterations):
                onehot = _SampleOneHot.apply(theta, generator)  # (k, V)
                noise = torch.randn(z0.shape, generator=generator).to(ctx.device)
                loss = self.loss(ctx, ids, base_embeds, where, onehot @ table, z0, t, noise)
                opt.zero_grad(set_to_none=True)
                theta.grad = torch.autograd.grad(loss, [theta])[0]
                opt.step()
                with torch.no_grad():
                    projected = torch.zeros_like(theta)
                    projected[:, allowed] = project_to_simplex(theta[:, allowed])
                    theta.copy_(projected)
                total += loss.item()
            rounds += 1
            losses.append(round(total / c.iterations, 6))
            tokens = theta.detach().argmax(dim=1).tolist()
            adv_ids = full_ids(tokens)
            adv = Adversarial(adv_ids, ctx.decode(adv_ids))
            if c.stop_on_success and oracle(adv).success:
                break
        adv.info = {"rounds": rounds, "timesteps": timestep_schedule(c.timesteps, ctx.num_train_timesteps)[:rounds],
                    "mean_loss_per_round": losses, "adversarial_tokens": tokens,
                    "seconds": round(time.perf_counter() - start, 3)}
        return adv
