"""`erasediff generate`: images from a prompt CSV through a stock diffusers StableDiffusionPipeline.

Used to build SD training data (PAPER.md §4.5: ~400 nudity images, ~100 "a person wearing clothes")
and to generate the evaluation sets (Imagenette 10 prompts × 100, I2P 4703 × 1, nudity 4 × 250).

Protocol (PAPER.md §4.4-4.5, §7.12): LMS scheduler, 50 steps, guidance 7.5 (the CSV's guidance
column only with `csv_guidance`), 512 px, no safety checker. Row r yields n images `<case>_<k>.png`,
k = 0..n−1, in batches; one CPU generator seeded with the row's seed draws the initial latents of
the row's batches in order (the official scripts' "manual_seed per prompt, batches continue the
stream"). The latents are drawn here and handed to the pipeline, so the result does not depend on
the device, and a resumed run (files that exist are skipped) draws and discards the same latents:
it reproduces exactly the images an uninterrupted run would have written.

Sharding: under `accelerate launch`, rows are split between processes
(`PartialState.split_between_processes`); the main process writes `manifest.csv` at the end
(columns path, prompt, seed, guidance, case_number, index), which is also the `prompt_folder`
training layout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .data.prompts import MANIFEST, PromptRow, read_prompt_csv
from .errors import ConfigError, ErasediffError, first_line

SCHEDULERS = ("lms", "ddim", "pndm", "euler", "euler_a", "dpm")


@dataclass(frozen=True)
class GenerateOptions:
    pipeline: str
    prompts: str
    output_dir: str
    model: Optional[str] = None  # a run directory (model/) or UNet folder replacing the pipeline's UNet
    n_per_prompt: int = 1
    max_per_prompt: Optional[int] = None  # cap on every row's count (smoke runs)
    steps: int = 50
    guidance: float = 7.5
    csv_guidance: bool = False
    scheduler: str = "lms"
    height: Optional[int] = None
    width: Optional[int] = None
    batch_size: int = 1
    default_seed: int = 0
    device: Optional[str] = None
    dtype: str = "float32"
    progress: bool = True


def _scheduler(name: str, config):
    import diffusers as d

    classes = {"lms": d.LMSDiscreteScheduler, "ddim": d.DDIMScheduler, "pndm": d.PNDMScheduler,
               "euler": d.EulerDiscreteScheduler, "euler_a": d.EulerAncestralDiscreteScheduler,
               "dpm": d.DPMSolverMultistepScheduler}
    if name not in classes:
        raise ConfigError(f"unknown scheduler '{name}'; valid: {', '.join(SCHEDULERS)}")
    return classes[name].from_config(config)


def _unet_dir(model: str) -> str:
    p = Path(model)
    for cand in (p / "model", p / "unet", p):
        if (cand / "config.json").is_file():
            return str(cand)
    if p.exists() or model.startswith((".", "/", "~")):
        raise ErasediffError(f"--model '{model}' holds no UNet: expected a run directory (model/), a pipeline (unet/) "
                             "or a UNet folder (config.json)")
    return model  # a Hub id


def load_pipeline(pipeline: str, model: Optional[str], dtype: torch.dtype, scheduler: str):
    """A StableDiffusionPipeline from `pipeline`, with the UNet of `model` if given; no safety checker."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    kwargs = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if model is not None:
            kwargs["unet"] = UNet2DConditionModel.from_pretrained(_unet_dir(model), torch_dtype=dtype)
        pipe = StableDiffusionPipeline.from_pretrained(pipeline, **kwargs)
    except (OSError, ValueError) as exc:
        raise ErasediffError(f"could not load pipeline '{pipeline}'"
                             f"{f' with the UNet of {model}' if model else ''}: {first_line(exc)}") from None
    pipe.scheduler = _scheduler(scheduler, pipe.scheduler.config)
    return pipe


def images_of(row: PromptRow, opts: GenerateOptions) -> int:
    """How many images row `row` yields: its `num_images` column, else --n-per-prompt; capped by --max-per-prompt."""
    n = row.num_images if row.num_images is not None else opts.n_per_prompt
    return min(n, opts.max_per_prompt) if opts.max_per_prompt is not None else n


def plan(rows: list[PromptRow], opts: GenerateOptions) -> list[tuple[PromptRow, int, str]]:
    """(row, k, file name) of every image, in generation order."""
    return [(r, k, f"{r.case_number}_{k}.png") for r in rows for k in range(images_of(r, opts))]


def generate(opts: GenerateOptions) -> dict:
    """Generate the images of `opts` (module docstring); returns a summary (written, skipped, manifest)."""
    from accelerate import PartialState

    if min(opts.n_per_prompt, opts.batch_size, opts.steps, opts.max_per_prompt or 1) < 1:
        raise ErasediffError("--n-per-prompt, --max-per-prompt, --batch-size and --steps must be >= 1")
    if opts.dtype not in ("float32", "float16", "bfloat16"):
        raise ErasediffError(f"--dtype '{opts.dtype}' is unknown; valid: float32, float16, bfloat16")
    if opts.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler '{opts.scheduler}'; valid: {', '.join(SCHEDULERS)}")
    rows = read_prompt_csv(opts.prompts, opts.default_seed)
    out = Path(opts.output_dir)
    state = PartialState()
    device = torch.device(opts.device) if opts.device is not None else state.device
    if opts.device is not None and state.num_processes > 1:
        raise ErasediffError("--device cannot be combined with several processes (accelerate picks each one's device)")
    pipe = load_pipeline(opts.pipeline, opts.model, getattr(torch, opts.dtype), opts.scheduler).to(device)
    pipe.set_progress_bar_config(disable=True)
    height = opts.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = opts.width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    latent_shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    out.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    with state.split_between_processes(rows) as my_rows:
        bar = tqdm(total=sum(images_of(r, opts) for r in my_rows), desc=f"generate[{state.process_index}]", unit="img",
                   disable=not opts.progress or not state.is_local_main_process)
        for row in my_rows:
            gen = torch.Generator().manual_seed(row.seed)
            guidance = row.guidance if opts.csv_guidance and row.guidance is not None else opts.guidance
            n = images_of(row, opts)
            for start in range(0, n, opts.batch_size):
                ks = list(range(start, min(start + opts.batch_size, n)))
                # the row's stream advances by one batch of latents whether or not it is generated
                latents = torch.randn((len(ks), *latent_shape), generator=gen)
                paths = [out / f"{row.case_number}_{k}.png" for k in ks]
                if all(p.is_file() for p in paths):
                    skipped += len(ks)
                    bar.update(len(ks))
                    continue
                images = pipe(prompt=[row.prompt] * len(ks), height=height, width=width,
                              num_inference_steps=opts.steps, guidance_scale=guidance,
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
            for row, k, name in plan(rows, opts):
                if (out / name).is_file():
                    g = row.guidance if opts.csv_guidance and row.guidance is not None else opts.guidance
                    w.writerow([name, row.prompt, row.seed, g, row.case_number, k])
    return {"output_dir": str(out), "images": len(plan(rows, opts)), "written": written,
            "skipped_existing": skipped, "manifest": str(manifest), "process": state.process_index}
