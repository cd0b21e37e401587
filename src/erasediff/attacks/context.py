"""AttackContext: the models and operations an attack may use (attacks/base.py; docs/robustness.md).

Everything comes from one diffusers StableDiffusionPipeline whose UNet is the ATTACKED model (an
unlearned run, a UNet folder, or the pipeline's own for SD v1.4): its tokenizer and CLIP text encoder,
the UNet, the VAE and the scheduler. All are frozen (requires_grad False, eval): attacks optimise
their own tensors (token distributions, token embeddings) through them.

Text with replaced token embeddings: `encode(ids, token_embeds)` runs the text encoder on `ids` with
the output of its token-embedding lookup replaced by `token_embeds` (a forward hook on
`get_input_embeddings()`), so the position embeddings, the causal mask and the final layer norm are the
encoder's own: identical to `encode(ids)` when token_embeds = table[ids] (a test checks this).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data.prompts import PromptRow
from ..generate import guidance_of, image_shape, row_latents
from ..metrics.asr import Judgement


@dataclass
class Adversarial:
    """An attacked prompt.

    input_ids: (L,) int64, L = the tokenizer's model_max_length (77 for CLIP): <|startoftext|>, the
      prompt's tokens, <|endoftext|> padding, exactly what the text encoder reads;
    token_embeds: None (the text encoder looks the ids up), or (L, D) float32 token embeddings that
      replace the lookup at every position (D = 768 for SD v1.4's CLIP ViT-L/14);
    text: the prompt as words (the ids decoded; a learned token is written as its placeholder);
    info: what the attack reports about this prompt (losses, iterations, seconds), written to its record.
    """

    input_ids: torch.Tensor
    text: str
    token_embeds: Optional[torch.Tensor] = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trial:
    """Images of one adversarial prompt (files written) and the judge's reading of each."""

    adversarial: Adversarial
    images: list[Path]
    judgements: list[Judgement] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return any(j.success for j in self.judgements)


class AttackContext:
    """See the module docstring. judge: image files -> one Judgement each (metrics/asr.py)."""

    def __init__(self, cfg: RunConfig, pipe, device: torch.device,
                 judge: Callable[[Sequence[Path]], list[Judgement]], targets: Optional[dict[int, list[Path]]] = None):
        from diffusers import DDPMScheduler

        self.cfg, self.pipe, self.device, self.judge = cfg, pipe, device, judge
        #: {case number: image files} of the original model's images of each prompt (attacks that need them)
        self.targets = targets
        self.tokenizer, self.text_encoder, self.unet, self.vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        for m in (self.text_encoder, self.unet, self.vae):
            m.eval().requires_grad_(False)
        schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        #: ᾱ_t (T,) float32 on the device: the forward process of the UNet's training (SD: scaled_linear)
        self.alphas_cumprod = schedule.alphas_cumprod.to(device, torch.float32)
        self.num_train_timesteps = int(schedule.config.num_train_timesteps)
        self.height, self.width, self.latent_shape = image_shape(pipe, cfg.generate)
        self.dtype = self.unet.dtype

    # ------------------------------------------------------------------------------------------ text
    @property
    def token_table(self) -> torch.Tensor:
        """The text encoder's token embeddings (V, D) (V = 49,408, D = 768 for SD v1.4), frozen."""
        return self.text_encoder.get_input_embeddings().weight

    @property
    def special_ids(self) -> set[int]:
        """Ids an attack must not place inside a prompt: <|startoftext|>, <|endoftext|> (= padding)."""
        return {i for i in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
                if i is not None}

    def tokenize(self, prompt: str) -> torch.Tensor:
        """(L,) int64 ids of `prompt` as the pipeline reads it: padded to model_max_length, truncated."""
        return self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids[0]

    def prompt_tokens(self, ids: torch.Tensor) -> list[int]:
        """The word tokens of (L,) ids: without <|startoftext|> and the <|endoftext|> padding."""
        special = self.special_ids
        return [int(i) for i in ids.tolist() if int(i) not in special]

    def assemble(self, tokens: Sequence[int]) -> torch.Tensor:
        """(L,) ids: <|startoftext|>, `tokens` (cut to L − 2), <|endoftext|> up to L (CLIP's layout)."""
        L = self.tokenizer.model_max_length
        body = list(tokens)[: L - 2]
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        ids = [self.tokenizer.bos_token_id, *body, eos]
        return torch.tensor(ids + [pad] * (L - len(ids)), dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(self.prompt_tokens(ids)).strip()

    def plain(self, row: PromptRow) -> Adversarial:
        """The un-attacked prompt of `row` as an Adversarial (what `none` and the pre-attack stage generate)."""
        return Adversarial(self.tokenize(row.prompt), row.prompt)

    def encode(self, ids: torch.Tensor, token_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Text-encoder hidden states (B, L, D_text) of ids (B, L) or (L,); with token_embeds (B, L, D) /
        (L, D) replacing the token lookup (module docstring). Differentiable w.r.t. token_embeds."""
        ids = (ids if ids.dim() == 2 else ids[None]).to(self.device)
        if token_embeds is None:
            return self.text_encoder(ids)[0]
        embeds = token_embeds if token_embeds.dim() == 3 else token_embeds[None]
        if embeds.shape[:2] != ids.shape:
            raise ValueError(f"token_embeds {tuple(embeds.shape)} do not match ids {tuple(ids.shape)}")

        def replace(module, inputs, output):
            return embeds.to(output.device, output.dtype)

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            return self.text_encoder(ids)[0]
        finally:
            handle.remove()

    def hidden_states(self, adv: Adversarial) -> torch.Tensor:
        """(1, L, D_text) text condition of an adversarial prompt (no gradient)."""
        with torch.no_grad():
            return self.encode(adv.input_ids, adv.token_embeds)

    # ------------------------------------------------------------------------------- denoising loss
    def denoising_loss(self, z0: torch.Tensor, hidden: torch.Tensor, t: torch.Tensor,
                       noise: torch.Tensor, criterion: str = "l2") -> torch.Tensor:
        """mean ‖ε − ε_θ(√ᾱ_t z0 + √(1−ᾱ_t) ε, t, hidden)‖² of the attacked UNet (UnlearnDiffAtk's objective;
        criterion "l1": the mean absolute error instead).

        z0: (B, 4, h, w) scaled target latents; hidden: (B or 1, L, D_text); t: (B,) int64 in [0, T);
        noise: (B, 4, h, w). Scalar float32, differentiable w.r.t. hidden.
        """
        a = self.alphas_cumprod[t.to(self.device)].view(-1, 1, 1, 1)
        z0, noise = z0.to(self.device), noise.to(self.device)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        if hidden.shape[0] != zt.shape[0]:
            hidden = hidden.expand(zt.shape[0], *hidden.shape[1:])
        eps = self.unet(zt.to(self.dtype), t.to(self.device), encoder_hidden_states=hidden.to(self.dtype)).sample
        return (F.l1_loss if criterion == "l1" else F.mse_loss)(eps.float(), noise.float())

    @torch.no_grad()
    def latents_of(self, images: Sequence[Path]) -> torch.Tensor:
        """Scaled VAE latents (N, 4, h, w) float32 of image files (resized to the generation size): the
        posterior mean × scaling_factor, as UnlearnDiffAtk encodes its target images. 8 images per VAE
        call: at 512 px a whole target set in one batch is a memory spike."""
        from torchvision.transforms.functional import resize

        from ..data.imagenette import image_batches, read_image

        size = (self.height, self.width)

        def read(path) -> torch.Tensor:  # (3, h, w) in [-1, 1]
            x = read_image(path)
            return x if tuple(x.shape[1:]) == size else resize(x, list(size), antialias=True)

        z = torch.cat([self.vae.encode(b.to(self.device, self.vae.dtype)).latent_dist.mean
                       for b in image_batches(list(images), 8, read)])
        return z.float() * float(self.vae.config.scaling_factor)

    def target_latents(self, row: PromptRow) -> torch.Tensor:
        """(n, 4, h, w) latents of the original model's images of `row` (the attack's `needs_targets`)."""
        if not self.targets or row.case_number not in self.targets:
            raise RuntimeError(f"no target images of prompt {row.case_number}: the attack must set needs_targets")
        return self.latents_of(self.targets[row.case_number])

    # ------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, adv: Adversarial, row: PromptRow, n: int, folder: Path) -> list[Path]:
        """n images of `adv` into folder/<case>_<k>.png with the row's seed stream and the `generate`
        section's scheduler, steps and guidance (the same latents as `erasediff generate` draws for the
        row, so the plain prompt's images are `generate`'s)."""
        g = self.cfg.generate
        folder.mkdir(parents=True, exist_ok=True)
        hidden = self.hidden_states(adv).to(self.dtype)
        paths = []
        for ks, latents in row_latents(row, n, g.batch_size, self.latent_shape):
            images = self.pipe(prompt_embeds=hidden.expand(len(ks), -1, -1), height=self.height, width=self.width,
                               num_inference_steps=g.steps, guidance_scale=guidance_of(row, g),
                               latents=latents.to(self.device, self.dtype)).images
            for k, img in zip(ks, images):
                path = folder / f"{row.case_number}_{k}.png"
                img.save(path)
                paths.append(path)
        return paths

    def trial(self, adv: Adversarial, row: PromptRow, folder: Path) -> Trial:
        """Generate `robustness.images_per_prompt` images of `adv` into `folder` and judge them."""
        paths = self.generate(adv, row, self.cfg.robustness.images_per_prompt, folder)
        return Trial(adv, paths, self.judge(paths))
