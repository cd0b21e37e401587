"""Stable Diffusion v1.4's exact architecture with RANDOM weights, written as a diffusers pipeline folder.

Why: the project's SD code (loading, memory and step time at full size, the `model.trainable` filters)
must be testable and benchmarkable at the published shapes, but the published weights are a Hub
download that offline machines, CI and benchmark hosts cannot make. The architecture is a handful of
small JSON files (`architectures/<name>/`: unet, vae, text_encoder, scheduler, model_index); the
weights are seeded random init; the tokenizer is CLIP's real BPE, derived from the vocabulary file
that open-clip-torch ships, so prompts become the token ids the real model sees. Images from such a
pipeline are noise; shapes, parameter counts, file sizes and timings are the real ones.

`python -m erasediff random-pipeline --like sd-v1-4 --output-dir DIR` (docs/full_size.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.resources
import importlib.util
import json
import shutil
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ErasediffError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODELS = ("unet", "vae", "text_encoder")  # the components with weights, in writing order
PARTS = ("unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/", "model_index.json")
TRAINABLE_MODES = ("full", "xattn", "noxattn", "selfattn")  # model.trainable (backbones/stable_diffusion.py)
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges, shipped inside open-clip-torch
CLIP_VOCAB_SIZE = 49408  # 256 bytes + 256 `</w>` bytes + 48,894 merges + <|startoftext|>, <|endoftext|>
CONTEXT_LENGTH = 77  # CLIP's text context, tokens


def _architectures_dir():
    return importlib.resources.files("erasediff").joinpath("architectures")


def architectures() -> list[str]:
    """Names accepted by `--like`: the folders of `architectures/` that hold a model_index.json."""
    root = _architectures_dir()
    return sorted(d.name for d in root.iterdir() if d.is_dir() and d.joinpath("model_index.json").is_file())


def load_architecture(like: str) -> dict[str, dict[str, Any]]:
    """The five configs of architecture `like`: {"unet", "vae", "text_encoder", "scheduler", "model_index"}."""
    names = architectures()
    if like not in names:
        raise ErasediffError(f"architecture '{like}' is unknown; valid: {', '.join(names)}")
    folder = _architectures_dir().joinpath(like)
    return {part: json.loads(folder.joinpath(f"{part}.json").read_text())
            for part in (*MODELS, "scheduler", "model_index")}


def build_model(config: dict[str, Any], part: str) -> nn.Module:
    """A randomly initialised `part` ("unet", "vae", "text_encoder") from its config, float32, on the
    current default device (`with torch.device("meta"):` builds it without memory)."""
    if part == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(config)
    if part == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(config)
    if part == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))
    raise ValueError(f"no model part '{part}'; valid: {', '.join(MODELS)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_counts(unet: nn.Module) -> dict[str, int]:
    """Parameters each `model.trainable` mode trains, by the backbone's own filter (`select_parameters`)."""
    from .backbones.stable_diffusion import select_parameters

    named = list(unet.named_parameters())
    return {mode: sum(p.numel() for _, p in select_parameters(named, mode)) for mode in TRAINABLE_MODES}


def meta_counts(like: str) -> dict[str, Any]:
    """Parameter counts of `like` built on the meta device (no memory, ~0.1 s at full size)."""
    arch = load_architecture(like)
    with torch.device("meta"):
        models = {part: build_model(arch[part], part) for part in MODELS}
    counts: dict[str, Any] = {part: count_parameters(m) for part, m in models.items()}
    counts["total"] = sum(counts[part] for part in MODELS)
    counts["unet_trainable"] = trainable_counts(models["unet"])
    return counts


# ------------------------------------------------------------------------------------- tokenizer
def clip_bpe_path() -> Path:
    """open-clip-torch's copy of CLIP's BPE file. Found without importing open_clip (which needs timm,
    ftfy, ...): only the file is read, so `pip install --no-deps open-clip-torch` is enough."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.origin).parent / BPE_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ErasediffError(f"CLIP's tokenizer vocabulary ({BPE_FILE}) is not installed; it ships with open-clip-torch: "
                             "pip install open-clip-torch (the package's own dependencies are not needed: --no-deps)")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP / GPT-2's byte -> printable unicode table; its values are the 256 byte symbols in CLIP's
    vocabulary order (printable bytes first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(folder: Path, max_length: int = CONTEXT_LENGTH) -> str:
    """transformers' CLIPTokenizer files (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json) of openai/clip-vit-large-patch14, derived from the BPE file the way CLIP's
    SimpleTokenizer builds its vocabulary. Returns the source, for the summary."""
    path = clip_bpe_path()
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # 48,894 merges after the header line, as CLIP uses them
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(set(tokens)) != CLIP_VOCAB_SIZE:
        raise ErasediffError(f"{path} gives {len(set(tokens))} distinct tokens, not CLIP's {CLIP_VOCAB_SIZE}: a "
                             "different BPE file; reinstall open-clip-torch")
    folder.mkdir(parents=True)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}  # SD v1.4 pads with <|endoftext|> (49407)
    config = {"add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": max_length,
              "tokenizer_class": "CLIPTokenizer", **special}
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    try:
        version = metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        version = "?"
    return f"CLIP BPE from open-clip-torch {version} ({BPE_FILE}), {CLIP_VOCAB_SIZE} tokens"


# ---------------------------------------------------------------------------------------- writing
def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ErasediffError(f"output folder '{out}' exists and is not empty: choose a new --output-dir or delete it")


def _match_permissions(folder: Path) -> None:
    """safetensors writes its files 0600; give them the mode of the config.json beside them (the umask's)."""
    mode = (folder / "config.json").stat().st_mode & 0o777
    for f in folder.glob("*.safetensors"):
        f.chmod(mode)


@contextlib.contextmanager
def _quiet_library_bars():
    """No per-file bars of transformers / diffusers inside ours ("Writing model shards"); restored after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libs:
            lib.enable_progress_bar()


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def write_random_pipeline(like: str, out: Path, seed: int = 0, dtype: torch.dtype | str = torch.float32,
                          progress: bool = True) -> dict[str, Any]:
    """Write architecture `like` with seeded random weights in `dtype` to `out` as a diffusers
    StableDiffusionPipeline folder (safetensors); return a summary (parameter counts, tokenizer source, path).

    One model is in memory at a time (build float32, cast, save, free: the SD v1.4 UNet is 3.4 GB in
    float32). Everything goes to a hidden sibling folder that is renamed to `out` at the end, so an
    interrupted run leaves no folder that looks like a pipeline. The global RNG is left as it was.
    """
    from diffusers import PNDMScheduler
    from diffusers import __version__ as diffusers_version
    from tqdm.auto import tqdm

    out = Path(out)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise ErasediffError(f"dtype {dtype} is not supported; valid: {', '.join(DTYPES)}")
    arch = load_architecture(like)
    _check_output(out)
    clip_bpe_path()  # fail on a missing vocabulary before minutes of work
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    summary: dict[str, Any] = {"like": like, "output": str(out), "seed": seed,
                               "dtype": str(dtype).removeprefix("torch."), "parameters": {},
                               "unet_trainable": {}, "tokenizer": None}
    steps = ("tokenizer", "scheduler", *MODELS, "model_index")
    try:
        with tqdm(steps, desc=f"random {like}", unit="part", disable=not progress) as bar, \
                torch.random.fork_rng(devices=[]), _quiet_library_bars():
            for step in bar:
                bar.set_postfix_str(step)
                if step == "tokenizer":
                    summary["tokenizer"] = write_clip_tokenizer(tmp / "tokenizer")
                elif step == "scheduler":
                    PNDMScheduler.from_config(arch["scheduler"]).save_pretrained(tmp / "scheduler")
                elif step in MODELS:
                    torch.manual_seed(seed + MODELS.index(step))  # each part's weights independent of the others
                    model = build_model(arch[step], step)
                    # nn.Module.to: diffusers' own .to warns about fp32-only modules that these models lack
                    nn.Module.to(model, dtype=dtype)
                    summary["parameters"][step] = count_parameters(model)
                    if step == "unet":
                        summary["unet_trainable"] = trainable_counts(model)
                    model.save_pretrained(tmp / step, safe_serialization=True)
                    _match_permissions(tmp / step)
                    del model  # the only reference: freed before the next part is built
                else:
                    index = {"_class_name": arch["model_index"]["_class_name"],
                             "_diffusers_version": diffusers_version, **arch["model_index"]}
                    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        summary["parameters"]["total"] = sum(summary["parameters"][p] for p in MODELS)
        summary["bytes"] = _folder_bytes(tmp)
        _check_output(out)  # nothing appeared there meanwhile
        if out.exists():
            out.rmdir()  # an empty folder the caller made
        tmp.rename(out)
    except BaseException:  # also Ctrl-C: drop the partial folder, re-raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


# --------------------------------------------------------------------------------------------- CLI
def _cmd(args: argparse.Namespace) -> None:
    summary = write_random_pipeline(args.like, args.output_dir, seed=args.seed, dtype=DTYPES[args.dtype],
                                    progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output_dir}: {', '.join(PARTS)}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `random-pipeline` subcommand to the CLI's subparsers."""
    help_ = "write Stable Diffusion's exact architecture with RANDOM weights as a diffusers pipeline folder (offline)"
    p = subparsers.add_parser("random-pipeline", help=help_, description=help_ + "; see docs/full_size.md")
    p.add_argument("--like", choices=architectures(), default="sd-v1-4", help="architecture (default sd-v1-4)")
    p.add_argument("--output-dir", type=Path, required=True, help="new or empty folder to write the pipeline to")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weight dtype (default float32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
