"""`erasediff generate`: images of a prompt CSV through a stock diffusers StableDiffusionPipeline.

Used to build SD training data (docs/experiments.md "Nudity": ~400 nudity images, ~100 "a person
wearing clothes") and, inside `evaluate`, the evaluation sets of a stable_diffusion config (Imagenette
10 prompts × 100, I2P 4703 × 1, nudity 4 × 250). The settings are the config's `generate` section;
the pipeline (VAE, text encoder, tokenizer, scheduler config) is model.sd.pipeline, else
model.pretrained; a model (a run directory, UNet folder or Hub id) replaces its UNet.

Protocol (docs/evaluation.md "Sampling for evaluation"): LMS scheduler, 50 steps, guidance 7.5 (the
CSV's guidance column only with `generate.csv_guidance`), 512 px, no safety checker. Row r yields n
images `<case>_<k>.png`, k = 0..n−1, in batches; one CPU generator seeded with the row's seed draws
the initial latents of the row's batches in order (the official scripts' "manual_seed per prompt,
batches continue the stream"). The latents are drawn here and handed to the pipeline, so the result
does not depend on the device, and a resumed run (files that exist are skipped) draws and discards
the same latents: it reproduces exactly the images an uninterrupted run would have written.

Sharding: under `accelerate launch`, rows are split between processes
(`PartialState.split_between_processes`); the main process holds the folder (one writer per folder,
docs/reliability.md) and writes `manifest.csv` at the end (columns path, prompt, seed, guidance,
case_number, index), which is also the `prompt_folder` training layout.
"""

from __future__ import annotations

import csv
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .checkpoint import check_finite_weights, resolve_pretrained
from .config import GenerateConfig, RunConfig
from .data.prompts import MANIFEST, PromptRow, read_prompt_csv
from .device import resolve_device
from .errors import ConfigError, ErasediffError, first_line
from .rundir import FolderClaim


def pipeline_of(cfg: RunConfig) -> str:
    """The diffusers pipeline of a stable_diffusion config: model.sd.pipeline, else model.pretrained."""
    if cfg.model.backbone != "stable_diffusion":
        raise ConfigError(f"generating from a prompt CSV needs model.backbone: stable_diffusion (got {cfg.model.backbone})")
    pipeline = cfg.model.sd.pipeline or cfg.model.pretrained
    if pipeline is None:
        raise ConfigError("set model.pretrained (or model.sd.pipeline): the Stable Diffusion pipeline, e.g. "
                          "CompVis/stable-diffusion-v1-4 or a local pipeline folder")
    return pipeline


def unet_of(model: Optional[str], pipeline: str, use_ema: bool = False) -> Optional[str]:
    """Where the UNet of `model` lives (a run directory's model/ or model_ema/, a UNet folder, a pipeline's
    unet/, a Hub id), or None when `model` is None or the pipeline itself (its own UNet)."""
    if model is None or model == pipeline:
        return None
    raw, ema = resolve_pretrained(model)
    return ema if (use_ema and ema is not None) else raw


def _scheduler(name: str, config):
    import diffusers as d

    classes = {"lms": d.LMSDiscreteScheduler, "ddim": d.DDIMScheduler, "pndm": d.PNDMScheduler,
               "euler": d.EulerDiscreteScheduler, "euler_a": d.EulerAncestralDiscreteScheduler,
               "dpm": d.DPMSolverMultistepScheduler}
    return classes[name].from_config(config)


def load_pipeline(pipeline: str, unet: Optional[str], dtype: torch.dtype, scheduler: str):
    """A StableDiffusionPipeline from `pipeline`, with the UNet folder / Hub id `unet` if given; no safety checker."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    kwargs = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if unet is not None:
            kwargs["unet"] = UNet2DConditionModel.from_pretrained(unet, torch_dtype=dtype)
        pipe = StableDiffusionPipeline.from_pretrained(pipeline, **kwargs)
    except (OSError, ValueError) as exc:
        raise ErasediffError(f"could not load pipeline '{pipeline}'"
                             f"{f' with the UNet {unet}' if unet else ''}: {first_line(exc)}") from None
    check_finite_weights(pipe.unet, f"the UNet of {unet or pipeline}")
    pipe.scheduler = _scheduler(scheduler, pipe.scheduler.config)
    return pipe


def guidance_of(row: PromptRow, g: GenerateConfig) -> float:
    """The guidance scale of `row`: its CSV column with generate.csv_guidance, else generate.guidance."""
    return row.guidance if g.csv_guidance and row.guidance is not None else g.guidance


def images_of(row: PromptRow, g: GenerateConfig) -> int:
    """How many images row `row` yields: its `num_images` column, else generate.n_per_prompt; capped by max_per_prompt."""
    n = row.num_images if row.num_images is not None else g.n_per_prompt
    return min(n, g.max_per_prompt) if g.max_per_prompt is not None else n


def image_shape(pipe, g: GenerateConfig) -> tuple[int, int, tuple[int, int, int]]:
    """(height, width, latent shape (C, h, w)) of the images `g` asks `pipe` for (null size = the UNet's)."""
    height = g.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = g.width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return height, width, (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


def row_latents(row: PromptRow, n: int, batch_size: int, latent_shape: tuple[int, ...]):
    """Yield (ks, initial latents (len(ks), C, h, w) float32 on the CPU) for the n images of `row`, in batches:
    one CPU generator seeded with the row's seed draws them in order (the module docstring's protocol)."""
    gen = torch.Generator().manual_seed(row.seed)
    for start in range(0, n, batch_size):
        ks = list(range(start, min(start + batch_size, n)))
        yield ks, torch.randn((len(ks), *latent_shape), generator=gen)


def plan(rows: list[PromptRow], g: GenerateConfig) -> list[tuple[PromptRow, int, str]]:
    """(row, k, file name) of every image, in generation order."""
    return [(r, k, f"{r.case_number}_{k}.png") for r in rows for k in range(images_of(r, g))]


def generate(cfg: RunConfig, prompts: str | Path, output_dir: str | Path, model: Optional[str] = None, *,
             progress: bool = True, max_rows: Optional[int] = None) -> dict:
    """Generate the images of `prompts` (its first `max_rows` rows; None = all) into `output_dir` (module
    docstring); returns a summary (images, written, skipped_existing, manifest). Inputs are checked before
    anything is built."""
    from accelerate import PartialState

    g = cfg.generate
    pipeline = pipeline_of(cfg)
    rows = read_prompt_csv(prompts, g.seed)[:max_rows]
    unet = unet_of(model, pipeline, cfg.sample.use_ema)
    out = Path(output_dir)
    state = PartialState(cpu=resolve_device(cfg.device).type == "cpu")
    device = state.device if state.num_processes > 1 else resolve_device(cfg.device)
    written = skipped = 0
    with FolderClaim(out, "image folder") if state.is_main_process else nullcontext():
        pipe = load_pipeline(pipeline, unet, getattr(torch, g.dtype), g.scheduler).to(device)
        pipe.set_progress_bar_config(disable=True)
        out.mkdir(parents=True, exist_ok=True)  # the other processes of a launch write into the main one's folder
        height, width, latent_shape = image_shape(pipe, g)
        with state.split_between_processes(rows) as my_rows:
            bar = tqdm(total=sum(images_of(r, g) for r in my_rows), desc=f"generate[{state.process_index}]",
                       unit="img", disable=not progress or not state.is_local_main_process)
            for row in my_rows:
                guidance = guidance_of(row, g)
                # the row's stream advances by one batch of latents whether or not it is generated
                for ks, latents in row_latents(row, images_of(row, g), g.batch_size, latent_shape):
                    paths = [out / f"{row.case_number}_{k}.png" for k in ks]
                    if all(p.is_file() for p in paths):
                        skipped += len(ks)
                        bar.update(len(ks))
                        continue
                    images = pipe(prompt=[row.prompt] * len(ks), height=height, width=width,
                                  num_inference_steps=g.steps, guidance_scale=guidance,
                                  latents=latents.to(device, pipe.unet.dtype)).images
                    for img, path in zip(images, paths):
                        img.save(path)
                    written += len(ks)
                    bar.update(len(ks))
            bar.close()
        state.wait_for_everyone()
        manifest = out / MANIFEST
        if state.is_main_process:
            with manifest.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "prompt", "seed", "guidance", "case_number", "index"])
                for row, k, name in plan(rows, g):
                    if (out / name).is_file():
                        w.writerow([name, row.prompt, row.seed, guidance_of(row, g), row.case_number, k])
    return {"output_dir": str(out), "images": len(plan(rows, g)), "written": written,
            "skipped_existing": skipped, "manifest": str(manifest), "process": state.process_index}
