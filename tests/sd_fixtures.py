"""Tiny random stand-ins for the Stable Diffusion tests, built offline on CPU in seconds (the only ones:
the package ships none).

- A Stable Diffusion pipeline directory. Layout = a stock diffusers pipeline (model_index.json, unet/,
  vae/, text_encoder/, tokenizer/, scheduler/), so `StableDiffusionPipeline.from_pretrained(dir)` and
  `model.pretrained: dir` load it exactly as they load `CompVis/stable-diffusion-v1-4` on a user's
  machine. Sizes follow docs/cpu.md "Stable Diffusion on a CPU": UNet block_out_channels (32, 64) with
  cross_attention_dim 32, a 2-layer CLIP text encoder of width 32, and a byte-level BPE tokenizer whose
  vocab.json / merges.txt this module writes itself.
- An ImageNet judge for `evaluate.classifier`: a classifier folder of the project (a digits CNN on 3x16x16
  images with 1000 outputs and 8 features, which also stand in for Inception's).
- A CLIP folder for `evaluate.clip_model`: a 2-layer CLIP on 32 px images with a byte-level tokenizer
  without merges (`save_pretrained`).
The numbers these networks give mean nothing; they exercise the evaluation end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from erasediff.random_pipeline import bytes_to_unicode  # the tokenizer's byte table, one definition

# Words of the test prompts that become single tokens (the rest falls back to byte symbols).
WORDS = ("tench", "church", "nudity", "naked", "person", "wearing", "clothes", "image", "photo", "an", "of", "a")


def write_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt of a byte-level BPE CLIP tokenizer: 256 byte symbols, their `</w>` forms,
    merges that make each of WORDS one token, and the start/end tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            merges.append(f"{a} {b}")
            vocab.setdefault(a + b, len(vocab))
            parts = [a + b] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    tok.save_pretrained(str(folder))


def build_tiny_sd_pipeline(root: Path, seed: int = 0) -> Path:
    """Write a tiny, randomly initialised SD pipeline to `root` and return it. ~1 s on one CPU core."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    root = Path(root)
    write_tokenizer(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    # SD v1.4's training schedule (scaled_linear 0.00085 -> 0.012, T = 1000), as its scheduler/ config
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(root))
    return root


def write_image_folder(folder: Path, prompts: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """`count` PNGs per prompt with a manifest.csv (path, prompt) as `erasediff generate` writes it."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (prompt, count) in enumerate(prompts.items()):
        for i in range(count):
            name = f"{k}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
            rows.append({"path": name, "prompt": prompt, "seed": k, "guidance": 7.5, "case_number": k, "index": i})
    with (folder / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def write_tiny_classifier(folder: Path, image_size: int = 16, seed: int = 0) -> Path:
    """A random 1000-way classifier folder (classifier.json + classifier.safetensors) on 3 x size x size images."""
    from erasediff.metrics import DigitsCNN, save_classifier

    torch.manual_seed(seed)
    save_classifier(DigitsCNN(in_channels=3, image_size=image_size, num_classes=1000, feature_dim=8).eval(), folder)
    return Path(folder)


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer CLIP (32 px images, byte-level tokenizer without merges) saved as a CLIP folder."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = bytes_to_unicode()
    symbols = [table[b] for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 32, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPModel(config).eval().save_pretrained(str(folder))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


NUDITY_DATA = {"nudity": 2, "naked": 1, "erotic": 1, "sexual": 1, "a person wearing clothes": 3}


def _fixtures():
    """Session-scoped pytest fixtures (import them into a test module: `from sd_fixtures import ...`)."""
    import pytest

    @pytest.fixture(scope="session")
    def tiny_pipeline(tmp_path_factory) -> Path:
        return build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipeline")

    @pytest.fixture(scope="session")
    def nudity_folder(tmp_path_factory) -> Path:
        return write_image_folder(tmp_path_factory.mktemp("sd_data") / "nudity", NUDITY_DATA)

    @pytest.fixture(scope="session")
    def tiny_classifier(tmp_path_factory) -> Path:
        return write_tiny_classifier(tmp_path_factory.mktemp("sd_judge") / "classifier")

    @pytest.fixture(scope="session")
    def tiny_clip(tmp_path_factory) -> Path:
        return write_tiny_clip(tmp_path_factory.mktemp("sd_clip") / "clip")

    return tiny_pipeline, nudity_folder, tiny_classifier, tiny_clip


tiny_pipeline, nudity_folder, tiny_classifier, tiny_clip = _fixtures()
