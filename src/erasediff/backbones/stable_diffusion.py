"""Stable Diffusion v1.4 on diffusers (docs/experiments.md "Table 4", "Nudity"): VAE latents, CLIP text, UNet ε.

What the methods see (the same interface as the pixel families):
- batches are (images (B, 3, S, S) in [-1, 1], prompt ids (B,)) from the `prompt_folder` dataset;
- `encode` -> (z0 (B, 4, S/8, S/8) = VAE latent × vae.config.scaling_factor, prompt ids (B,));
- a condition is a prompt id: 0..P−1 = `data.prompts`, P = the null prompt "" (CFG),
  P+1 = `model.sd.surrogate_prompt`. Every prompt is encoded ONCE by the CLIP text encoder at start
  (a (P+2, 77, D) table, D = 768 for SD v1.4); the text encoder is then freed. `predict` looks the
  ids up and calls the UNet with encoder_hidden_states = table[ids]. So `null_condition`,
  `drop_condition`, `other_condition` (= the surrogate, EraseDiff's target prompt c_s) and
  `condition_for_classes` (prompt indices) are id arithmetic, and CFG batches cat ids;
- `sample_shape` = (4, S/8, S/8) latents for the one sampler (`samplers.sample`), `decode` the VAE.
Only the UNet trains; the VAE and the embeddings are frozen. The saved model/ of a run is a plain
`UNet2DConditionModel` folder: `StableDiffusionPipeline.from_pretrained(base,
unet=UNet2DConditionModel.from_pretrained(run/"model"))` loads it.

Trainable parameters in diffusers names (docs/peers.md "ESD"), `model.trainable`:
- `xattn`    names containing `attn2` (cross-attention to_q/to_k/to_v/to_out.0; ESD-x, EraseDiff-x);
- `noxattn`  everything except `attn2`, the time embedding (`time_embedding.*`) and the output layers
             (`conv_norm_out.*`, `conv_out.*`) — CompVis' `out.` filter matches nothing in diffusers,
             so those two are excluded by name; per-block `time_emb_proj` (CompVis `emb_layers`)
             and norms stay trainable, as in the CompVis code (ESD-u, EraseDiff-u);
- `selfattn` names containing `attn1`;  `full` every parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import ConfigError, ErasediffError, first_line
from .base import Backbone

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PIPELINE_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")


def select_parameters(named: list[tuple[str, nn.Parameter]], mode: str) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs of a diffusers UNet2DConditionModel that `mode` trains (module docstring)."""
    if mode == "full":
        return list(named)
    if mode == "xattn":
        return [(n, p) for n, p in named if "attn2" in n]
    if mode == "selfattn":
        return [(n, p) for n, p in named if "attn1" in n]
    if mode == "noxattn":
        frozen = ("time_embedding.", "conv_norm_out.", "conv_out.")
        return [(n, p) for n, p in named if "attn2" not in n and not n.startswith(frozen)]
    raise ConfigError(f"model.trainable '{mode}' is unknown; valid: full, xattn, noxattn, selfattn")


def _has_unet(path: Path) -> bool:
    return (path / "unet" / "config.json").is_file() or (path / "config.json").is_file() \
        or (path / "model" / "config.json").is_file()


def check_model_paths(pretrained: str | None, pipeline: str | None) -> str:
    """Validate `model.pretrained` / `model.sd.pipeline` before loading; return the pipeline to use.

    Local folders are checked for what they must hold (a UNet; the pipeline's VAE, text encoder,
    tokenizer and scheduler); anything else is taken as a Hub id and loaded by diffusers.
    """
    if pretrained is None:
        raise ConfigError("backbone 'stable_diffusion' needs model.pretrained: a diffusers pipeline (e.g. "
                          "CompVis/stable-diffusion-v1-4 or a local folder with unet/ vae/ text_encoder/ tokenizer/ "
                          "scheduler/), a UNet folder or a run directory")
    p = Path(pretrained)
    if p.is_dir() and not _has_unet(p):
        raise ConfigError(f"model.pretrained '{pretrained}' holds no UNet: expected a pipeline folder with unet/, a "
                          "UNet folder (config.json) or a run directory (model/)")
    base = pipeline or pretrained
    b = Path(base)
    if b.is_dir():
        missing = [part for part in _PIPELINE_PARTS if not (b / part).is_dir()]
        if missing:
            hint = "" if pipeline else " (model.pretrained is not a full pipeline: set model.sd.pipeline to one)"
            raise ConfigError(f"pipeline '{base}' lacks {', '.join(m + '/' for m in missing)}{hint}")
    elif b.exists() or base.startswith((".", "/", "~")):
        raise ConfigError(f"pipeline '{base}' not found: expected a local pipeline folder or a Hub id such as "
                          "CompVis/stable-diffusion-v1-4")
    return base


class StableDiffusionBackbone(Backbone):
    conditional = True

    def __init__(self, cfg: RunConfig, device: torch.device):
        super().__init__(cfg.diffusion, device)
        sd, d = cfg.model.sd, cfg.data
        self.sd = sd
        self.pipeline = check_model_paths(cfg.model.pretrained, sd.pipeline)
        self.prompts = list(d.prompts)
        forgotten = [self.prompts[c] for c in d.forget_classes if 0 <= c < len(self.prompts)]
        if sd.surrogate_prompt is not None and sd.surrogate_prompt in forgotten:
            raise ConfigError(f"model.sd.surrogate_prompt '{sd.surrogate_prompt}' is a forgotten prompt: the forgetting "
                              "target would be the concept itself; choose another prompt (e.g. 'a person wearing clothes')")
        self.image_size = d.image_size or 512
        self._check_scheduler()
        self.null_id = len(self.prompts)
        self.surrogate_id = self.null_id + 1 if sd.surrogate_prompt is not None else None
        table = self.prompts + [sd.null_prompt] + ([sd.surrogate_prompt] if sd.surrogate_prompt is not None else [])
        self.embeddings = self._encode_prompts(table)  # (P+2, L, D) float32, frozen
        self.vae = self._load_vae()
        self.vae_dtype = _DTYPES[sd.vae_dtype]
        self.scaling_factor = float(self.vae.config.scaling_factor)
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.image_size % down:
            raise ConfigError(f"data.image_size {self.image_size} must be a multiple of the VAE's downscale factor {down}")
        #: (C, h, w) of a latent: (4, S/8, S/8) for SD v1.4
        self.sample_shape = (int(self.vae.config.latent_channels), self.image_size // down, self.image_size // down)

    # ------------------------------------------------------------------------------------ loading
    def _load_error(self, what: str, exc: Exception) -> ErasediffError:
        return ErasediffError(f"could not load the {what} of pipeline '{self.pipeline}': {first_line(exc)}")

    def _check_scheduler(self) -> None:
        """The training noise schedule (config `diffusion`) must be the pipeline's (SD v1.4: scaled_linear
        0.00085 -> 0.012, T = 1000, ε-prediction); a mismatch would train on the wrong ᾱ_t."""
        from diffusers import DDPMScheduler

        try:
            sched = DDPMScheduler.load_config(self.pipeline, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise self._load_error("scheduler", exc) from None
        d = self.diffusion
        ours = {"num_train_timesteps": d.num_train_timesteps, "beta_schedule": d.beta_schedule,
                "beta_start": d.beta_start, "beta_end": d.beta_end}
        diff = {k: (v, sched.get(k)) for k, v in ours.items() if k in sched and sched[k] != v}
        if diff:
            raise ConfigError("config section 'diffusion' differs from the pipeline's scheduler: "
                              + ", ".join(f"diffusion.{k} = {a} but the pipeline has {b}" for k, (a, b) in diff.items()))
        if sched.get("prediction_type", "epsilon") != "epsilon":
            raise ConfigError(f"pipeline '{self.pipeline}' predicts '{sched['prediction_type']}'; only ε-prediction "
                              "models (SD v1.x) are supported")

    @torch.no_grad()
    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP last hidden states of `prompts`, padded to the tokenizer's max length: (P, L, D) on the device."""
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(self.pipeline, subfolder="tokenizer")
            encoder = CLIPTextModel.from_pretrained(self.pipeline, subfolder="text_encoder").to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise self._load_error("tokenizer / text encoder", exc) from None
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.device)
        out = torch.cat([encoder(ids[i : i + 32])[0] for i in range(0, len(prompts), 32)])
        del encoder  # the table is all training needs
        return out.float()

    def _load_vae(self) -> nn.Module:
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(self.pipeline, subfolder="vae", torch_dtype=_DTYPES[self.sd.vae_dtype])
        except (OSError, ValueError) as exc:
            raise self._load_error("VAE", exc) from None
        return vae.to(self.device).eval().requires_grad_(False)

    def build_model(self) -> nn.Module:
        raise ConfigError("backbone 'stable_diffusion' is never trained from scratch: set model.pretrained")

    def load_model(self, directory: str, **kwargs: Any) -> nn.Module:
        """A UNet2DConditionModel from a UNet folder, a pipeline folder (unet/) or a Hub pipeline id."""
        from diffusers import UNet2DConditionModel

        p = Path(directory)
        if p.is_dir() and (p / "config.json").is_file():
            unet = UNet2DConditionModel.from_pretrained(directory, **kwargs)
        else:
            unet = UNet2DConditionModel.from_pretrained(directory, subfolder="unet", **kwargs)
        if unet.config.cross_attention_dim != self.embeddings.shape[-1]:
            raise ConfigError(f"the UNet in '{directory}' attends to {unet.config.cross_attention_dim}-d text but the "
                              f"text encoder of '{self.pipeline}' gives {self.embeddings.shape[-1]}-d: use matching models")
        return unet

    # ---------------------------------------------------------------------------- the interface
    @torch.no_grad()
    def encode(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, S, S) in [-1, 1], prompt ids (B,)) -> (z0 (B, 4, S/8, S/8) float32, ids (B,))."""
        images, labels = batch
        dist = self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist
        # posterior sample (official code) uses the global RNG, which the loop seeds and checkpoints
        z = dist.sample() if self.sd.latent == "sample" else dist.mean
        return z.float() * self.scaling_factor, labels.to(self.device, torch.long)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 4, h, w) -> images (B, 3, 8h, 8w) in [-1, 1] (float32). Latents are never
        clamped; only the decoded images are."""
        x = self.vae.decode((z / self.scaling_factor).to(self.vae_dtype)).sample
        return x.float().clamp(-1, 1)

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε_θ(z_t, t, τ(c)): z_t (B, 4, h, w), t (B,) int64, cond (B,) prompt ids -> (B, 4, h, w) float32."""
        return model(xt, t, encoder_hidden_states=self.embeddings[cond]).sample.float()  # float32 under autocast too

    def null_condition(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.null_id, dtype=torch.long, device=self.device)

    def other_condition(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The surrogate prompt c_s for every sample (docs/method.md "Forgetting targets"); deterministic,
        `generator` unused."""
        if self.surrogate_id is None:
            raise ConfigError("this method's forgetting target needs a surrogate prompt: set model.sd.surrogate_prompt "
                              "(e.g. 'a person wearing clothes')")
        return torch.full_like(cond, self.surrogate_id)

    def condition_for_classes(self, classes: torch.Tensor) -> torch.Tensor:
        """Prompt indices into data.prompts -> conditions (the same ids; `predict` looks up the embeddings)."""
        return classes.to(self.device, dtype=torch.long)

    def trainable_parameters(self, model: nn.Module, mode: str) -> list[tuple[str, nn.Parameter]]:
        named = select_parameters(list(model.named_parameters()), mode)
        if not named:
            raise ConfigError(f"model.trainable '{mode}' selects no parameter of this UNet")
        return named
