"""CLIP score: how well generated images match their prompts (docs/evaluation.md "Stable Diffusion metrics", v3/v4).

The official `fid-clipscore.py` calls T2IBenchmark with OpenAI CLIP ViT-B/32: the mean over images of
the cosine similarity between the image embedding and its caption's embedding (≈0.3 for SD). The
paper reports ≈30, so probably that mean ×100 (docs/evaluation.md; UNCONFIRMED). We report both:

- `clip_cosine`: the raw mean cosine, in [-1, 1];
- `clip_score`: 100 × clip_cosine (no clamp at 0, unlike torchmetrics' CLIPScore = 100·max(cos, 0);
  real image–caption cosines are positive in practice, so the two agree there).

Model and processor are arguments: `build_clip(evaluate.clip_model)` loads transformers'
`openai/clip-vit-base-patch32` (Hub download on first use) or any CLIP folder (`save_pretrained`); the
tests point it at a tiny random one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.prompts import MANIFEST, manifest_rows
from ..errors import DataError, ErasediffError, first_line

CLIP_MODEL = "openai/clip-vit-base-patch32"


def build_clip(model_id: str = CLIP_MODEL, device: str | torch.device | None = None):
    """(CLIPModel in eval mode on `device`, CLIPProcessor) of `model_id` (a Hub id or a local folder)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(model_id)
        processor = CLIPProcessor.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise ErasediffError(f"could not load the CLIP model '{model_id}': {first_line(exc)}") from None
    model.eval()
    return (model if device is None else model.to(device)), processor


@torch.inference_mode()
def clip_cosines(images: Sequence[Image.Image], prompts: Sequence[str], model, processor, *,
                 batch_size: int = 50, progress: bool = False) -> torch.Tensor:
    """Cosine similarity (N,) float32 in [-1, 1] between CLIP's embedding of images[i] and of prompts[i].

    images: PIL images (the processor resizes and normalises them as CLIP was trained); prompts are
    truncated to the text encoder's context (77 tokens for ViT-B/32).
    """
    if len(images) != len(prompts):
        raise ErasediffError(f"CLIP score needs one prompt per image (got {len(images)} images, {len(prompts)} prompts)")
    if not images:
        raise DataError("CLIP score of no images")
    if batch_size < 1:
        raise ErasediffError(f"batch size must be >= 1 (got {batch_size})")
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="CLIP", unit="batch", disable=not progress):
        inputs = processor(text=list(prompts[start:start + batch_size]), images=list(images[start:start + batch_size]),
                           return_tensors="pt", padding=True, truncation=True)
        res = model(**{k: v.to(device) for k, v in inputs.items()})
        # image_embeds, text_embeds: (B, projection_dim), each row L2-normalised by CLIPModel
        out.append((res.image_embeds * res.text_embeds).sum(dim=-1).float().cpu())
    return torch.cat(out)


def clip_score(images: Sequence[Image.Image], prompts: Sequence[str], model, processor, *,
               batch_size: int = 50, progress: bool = False) -> dict:
    """{"clip_score": 100 × mean cosine, "clip_cosine": mean cosine, "clip_n": N} of image–prompt pairs (module docstring)."""
    cos = clip_cosines(images, prompts, model, processor, batch_size=batch_size, progress=progress)
    mean = float(cos.mean())
    return {"clip_score": 100.0 * mean, "clip_cosine": mean, "clip_n": len(cos)}


def clip_score_folder(folder, model, processor, *, batch_size: int = 50, max_images: Optional[int] = None,
                      progress: bool = False) -> dict:
    """`clip_score` of the images of folder/manifest.csv (columns path, prompt; what `generate` writes).

    max_images: only the first rows (the official COCO script scores the first 100 captions).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    rows = [(folder / r["path"], r["prompt"]) for r in manifest_rows(folder, ("path", "prompt"))][:max_images]
    if not rows:
        raise DataError(f"{manifest} lists no images")
    scores = []
    batches = range(0, len(rows), batch_size)  # read per batch: 1K 512 px images stay out of memory
    for start in tqdm(batches, desc="CLIP", unit="batch", disable=not progress):
        chunk = rows[start:start + batch_size]
        images = []
        for path, _ in chunk:
            if not path.is_file():
                raise DataError(f"{manifest} lists {path.name}, which is not in {folder}")
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        scores.append(clip_cosines(images, [p for _, p in chunk], model, processor, batch_size=batch_size))
    mean = float(torch.cat(scores).mean())
    return {"clip_score": 100.0 * mean, "clip_cosine": mean, "clip_n": len(rows)}
