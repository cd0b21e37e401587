"""BlindSpot (Tarun et al. 2023, "Deep Regression Unlearning"), stage 2: distil the forget set from a proxy.

Two stages (docs/baselines.md "BlindSpot"; paper: 100 epochs each):
1. Proxy: a model trained FROM RANDOM INIT on D_r only, so it never saw D_f: an ordinary `train` run
   of the loop with the finetune objective from the YAML that `proxy_config` names
   (`blindspot_proxy.yaml`). It is the method's declared artifact (`Method.artifacts`,
   docs/architecture.md): `erasediff precompute` on the BlindSpot config trains it into `proxy` (unset:
   <artifacts dir>/blindspot_proxy) with the same --set items (seed, architecture, ...) except method.*
   and model.pretrained; its dataset and forget classes must be the run's (checked). No code here.
2. This method: starting from the pretrained model θ, on each step with a forget batch (B_f) and a
   remain batch (B_r), i.e. one batch of D = D_f ∪ D_r,
       L = p_f · [ MSE(ε_θ(x_t^f, t, c_f), sg[ε_proxy(x_t^f, t, c_f)]) + β·L_AT ]
         + (1 − p_f) · MSE(ε_θ(x_t^r, t, c_r), ε),                p_f = B_f / (B_f + B_r)
   (p_f = the forget fraction of the combined batch, the official code's `mask.sum()/n`).
   L_AT = Σ_l mean_{b,hw} (A_l(θ) − A_l(proxy))², A_l = normalize_hw(mean_channels(h_l²)) of every
   UNet down-block output h_l on the forget batch (attention transfer, Zagoruyko & Komodakis; the
   form and placement inside the p_f term follow the official `attention_diff` / `forget_loss`).
   β = `at_weight`, default 0 as the official EraseDiff code.
Each set draws its own antithetic timesteps (the official code draws one set over the combined batch;
the distribution of t is the same, and separate draws split into per-process shares); `cond_drop`
(default 0.1, the official stage 2) drops labels per sample, and the proxy sees the same (dropped)
condition and noisy input as the model.

`proxy` = a run directory (its EMA weights `model_ema/` are used when present) or a model directory,
loaded once in `setup` with the backbone's `load_model`, frozen, in eval mode and without gradients.
Not reproduced from the official `train_blindspot` (docs/baselines.md "BlindSpot"): its proxy is initialised from
the pretrained checkpoint instead of random init, and its proxy output is computed with `model` (the
model being unlearned) instead of `proxy_model`.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from annotated_types import Ge, Interval
from torch import nn

from .. import shard
from ..checkpoint import resolve_pretrained
from ..config import MethodConfig
from ..errors import ConfigError, ErasediffError, first_line
from ..losses import denoising_loss, eps_mse
from . import register
from .base import Artifact, Method, MethodData, TrainState


class BlindSpotConfig(MethodConfig):
    name: Literal["blindspot"] = "blindspot"
    #: stage-1 proxy: run directory (model/ + model_ema/) or diffusers model directory (local path);
    #: null = <artifacts dir>/blindspot_proxy, which `precompute` trains from `proxy_config`
    proxy: Optional[str] = None
    #: the YAML of the proxy's `train` run (e.g. DDPM/configs/digits/blindspot_proxy.yaml)
    proxy_config: Optional[str] = None
    #: β of the attention-transfer term (0 = off, the official value; Tarun et al. use 50)
    at_weight: Annotated[float, Ge(0)] = 0.0
    #: label-dropout probability on both halves of the batch (official stage 2: 0.1)
    cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.1


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The UNet down blocks of `model` (diffusers UNets, or a wrapper holding one as `.unet`)."""
    for owner in (model, getattr(model, "unet", None)):
        blocks = getattr(owner, "down_blocks", None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return list(blocks)
    raise ConfigError(
        f"method.at_weight > 0 needs the UNet's down blocks, but {type(model).__name__} has no `down_blocks` "
        "(nor `.unet.down_blocks`); set method.at_weight=0"
    )


def attention_map(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) activations -> (B, H·W) unit-norm map of the channel-mean of h²."""
    return F.normalize(h.pow(2).mean(1).flatten(1), dim=1)


@register
class BlindSpot(Method):
    name = "blindspot"
    Config = BlindSpotConfig
    artifacts = (Artifact(key="proxy", default="blindspot_proxy", train_config="proxy_config",
                          description="BlindSpot's stage-1 proxy, trained from random init on D_r"),)

    def setup(self, state: TrainState, data: MethodData) -> None:
        raw, ema = resolve_pretrained(self.cfg.proxy)
        try:
            proxy = state.backbone.load_model(ema or raw)
        except (OSError, ValueError) as exc:
            raise ErasediffError(f"could not load method.proxy '{self.cfg.proxy}': {first_line(exc)}") from None
        self.proxy = proxy.to(state.backbone.device).eval().requires_grad_(False)
        # forward hooks collect the down-block outputs of the forget pass (only while `recording`)
        self.recording = False
        self.acts: dict[str, list[torch.Tensor]] = {"model": [], "proxy": []}
        if self.cfg.at_weight > 0:
            blocks = {"model": feature_modules(state.model), "proxy": feature_modules(self.proxy)}
            if len(blocks["model"]) != len(blocks["proxy"]):
                raise ConfigError(
                    f"method.at_weight > 0: the proxy has {len(blocks['proxy'])} down blocks but the model "
                    f"{len(blocks['model'])}; use a proxy of the same architecture or method.at_weight=0"
                )
            for key, modules in blocks.items():
                for m in modules:
                    m.register_forward_hook(partial(self._record, key))

    def _record(self, key: str, module: nn.Module, inputs, output) -> None:
        if self.recording:
            self.acts[key].append(output[0] if isinstance(output, tuple) else output)  # (B_f, C_l, H_l, W_l)

    def terms(self, state: TrainState, forget, remain) -> tuple[dict[str, torch.Tensor], float]:
        """The three loss terms (scalars with graph: forget distillation, attention transfer, remain), p_f."""
        bb, gen, p = state.backbone, state.generator, self.cfg.cond_drop
        x_f, c_f = bb.encode(forget)  # x: (B_f, C, H, W)
        x_r, c_r = bb.encode(remain)  # x: (B_r, C, H, W)
        b_f, b_r = x_f.shape[0], x_r.shape[0]
        # one antithetic draw per set (a draw over the concatenation would not split into per-process shares)
        t_f, t_r = bb.sample_timesteps(b_f, gen), bb.sample_timesteps(b_r, gen)  # (B_f,), (B_r,)
        eps_f = shard.randn(x_f.shape, gen).to(x_f.device)
        c_f = bb.drop_condition(c_f, p, gen)
        xt_f = bb.add_noise(x_f, eps_f, t_f)
        self.acts = {"model": [], "proxy": []}
        self.recording = True
        pred_f = bb.predict(state.model, xt_f, t_f, c_f)  # ε_θ(x_t^f, t, c_f): (B_f, C, H, W)
        with torch.no_grad():
            target_f = bb.predict(self.proxy, xt_f, t_f, c_f)  # sg[ε_proxy(x_t^f, t, c_f)]
        self.recording = False
        at = sum(
            (eps_mse(attention_map(a), attention_map(b)) for a, b in zip(self.acts["model"], self.acts["proxy"])),
            pred_f.new_zeros(()),
        )
        self.acts = {"model": [], "proxy": []}
        loss_r, _ = denoising_loss(bb, state.model, x_r, c_r, gen, t=t_r, cond_drop=p)
        return {"loss_f": eps_mse(pred_f, target_f), "loss_at": at, "loss_r": loss_r}, b_f / (b_f + b_r)

    def loss(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        parts, p_f = self.terms(state, forget, remain)
        total = p_f * (parts["loss_f"] + self.cfg.at_weight * parts["loss_at"]) + (1 - p_f) * parts["loss_r"]
        logs = {k: v.item() for k, v in parts.items() if k != "loss_at" or self.cfg.at_weight > 0}
        return total, {**logs, "p_f": p_f, "loss": total.item()}
