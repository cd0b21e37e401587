"""`random-pipeline`: SD v1.4's exact architecture with random weights (docs/full_size.md).

The full-size checks build on the meta device (no memory, no time); the write / load / generate path
runs on the `tiny` architecture, which has the same layout, scheduler and real CLIP tokenizer.
"""

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import erasediff.random_pipeline as rp
from erasediff.errors import ErasediffError

# Published sizes of CompVis/stable-diffusion-v1-4 (UNet, VAE) and openai/clip-vit-large-patch14's text tower.
PUBLISHED = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
# model.trainable of the SD backbone (backbones/stable_diffusion.py select_parameters) on the full UNet.
TRAINABLE = {"full": 859_520_964, "xattn": 43_962_560, "noxattn": 813_495_680, "selfattn": 49_574_080}
# Checked against open_clip.tokenizer.SimpleTokenizer 3.3.0 (which pads with 0; SD's tokenizer pads with
# <|endoftext|> = 49407): <|startoftext|> a photo of a ten ch <|endoftext|>.
TENCH_IDS = [49406, 320, 1125, 539, 320, 1149, 634, 49407] + [49407] * 69
CLOTHES_IDS = [49406, 320, 2533, 3309, 7080, 49407]  # "a person wearing clothes"
NUDITY_IDS = [49406, 1156, 16436, 49407]  # "nudity" = "nu" + "dity</w>"
PARTS = {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"}


def _has_bpe() -> bool:
    try:
        rp.clip_bpe_path()
    except ErasediffError:
        return False
    return True


needs_bpe = pytest.mark.skipif(not _has_bpe(), reason="open-clip-torch (CLIP's BPE file) is not installed: "
                               "pip install --no-deps open-clip-torch")


def test_architectures_listed():
    assert {"sd-v1-4", "tiny"} <= set(rp.architectures())
    with pytest.raises(ErasediffError, match="valid: .*sd-v1-4"):
        rp.load_architecture("sd-v9")


def test_full_size_parameter_counts_are_the_published_ones():
    counts = rp.meta_counts("sd-v1-4")
    assert {k: counts[k] for k in PUBLISHED} == PUBLISHED
    assert counts["total"] == sum(PUBLISHED.values()) == 1_066_235_307


def test_full_size_trainable_counts_use_the_backbone_filter(monkeypatch):
    assert rp.meta_counts("sd-v1-4")["unet_trainable"] == TRAINABLE
    # the counts come from the backbone's own filter: changing it changes them
    import erasediff.backbones.stable_diffusion as sd

    monkeypatch.setattr(sd, "select_parameters", lambda named, mode: named[:1])
    assert rp.meta_counts("sd-v1-4")["unet_trainable"]["xattn"] == 320 * 4 * 3 * 3  # conv_in.weight


def test_full_size_configs():
    arch = rp.load_architecture("sd-v1-4")
    u, v, t, s = arch["unet"], arch["vae"], arch["text_encoder"], arch["scheduler"]
    assert (u["sample_size"], u["cross_attention_dim"], u["attention_head_dim"], u["layers_per_block"]) == (64, 768, 8, 2)
    assert v["scaling_factor"] == 0.18215 and v["block_out_channels"] == [128, 256, 512, 512]
    assert (t["hidden_size"], t["num_hidden_layers"], t["max_position_embeddings"], t["hidden_act"]) == \
        (768, 12, 77, "quick_gelu")
    assert (s["beta_start"], s["beta_end"], s["beta_schedule"], s["steps_offset"], s["clip_sample"]) == \
        (0.00085, 0.012, "scaled_linear", 1, False)
    assert arch["model_index"]["safety_checker"] == [None, None]


@needs_bpe
def test_tokenizer_gives_clip_ids(tmp_path):
    from transformers import CLIPTokenizer

    source = rp.write_clip_tokenizer(tmp_path / "tok")
    assert "open-clip-torch" in source
    assert {f.name for f in (tmp_path / "tok").iterdir()} == \
        {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a tench", padding="max_length", max_length=77).input_ids == TENCH_IDS
    assert tok("a person wearing clothes").input_ids == CLOTHES_IDS
    assert tok("nudity").input_ids == NUDITY_IDS


def test_missing_vocabulary_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "BPE_FILE", "no_such_vocab.txt.gz")
    with pytest.raises(ErasediffError) as err:
        rp.write_random_pipeline("tiny", tmp_path / "p", progress=False)
    assert "pip install open-clip-torch" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@needs_bpe
def test_tiny_write_loads_generates_and_refuses_a_second_write(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "tiny"
    state = torch.random.get_rng_state()
    summary = rp.write_random_pipeline("tiny", out, seed=0, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert {p.name for p in out.iterdir()} == PARTS and [p.name for p in tmp_path.iterdir()] == ["tiny"]
    assert summary["output"] == str(out) and "open-clip-torch" in summary["tokenizer"]
    counts = rp.meta_counts("tiny")
    assert summary["parameters"] == {k: counts[k] for k in ("unet", "vae", "text_encoder", "total")}
    assert summary["unet_trainable"] == counts["unet_trainable"]
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["clip_sample"] is False
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_mode & 0o777 == (out / "unet" / "config.json").stat().st_mode & 0o777

    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.safety_checker is None and type(pipe.scheduler).__name__ == "PNDMScheduler"
    images = pipe("a photo of a tench", num_inference_steps=2, height=32, width=32, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()

    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(ErasediffError) as err:
        rp.write_random_pipeline("tiny", out, progress=False)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


@needs_bpe
def test_same_seed_same_weights(tmp_path):
    a = rp.write_random_pipeline("tiny", tmp_path / "a", seed=3, progress=False)
    rp.write_random_pipeline("tiny", tmp_path / "b", seed=3, progress=False)
    rp.write_random_pipeline("tiny", tmp_path / "c", seed=4, progress=False)
    wa, wb, wc = (load_file(tmp_path / d / "vae" / "diffusion_pytorch_model.safetensors") for d in "abc")
    assert a["seed"] == 3 and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["encoder.conv_in.weight"], wc["encoder.conv_in.weight"])


@needs_bpe
def test_interrupted_write_leaves_no_pipeline(tmp_path, monkeypatch):
    build = rp.build_model

    def stop_at_vae(config, part):
        if part == "vae":
            raise KeyboardInterrupt
        return build(config, part)

    monkeypatch.setattr(rp, "build_model", stop_at_vae)
    with pytest.raises(KeyboardInterrupt):
        rp.write_random_pipeline("tiny", tmp_path / "p", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither p/ nor the hidden partial folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erasediff")
    rp.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


@needs_bpe
def test_cli_writes_float16_then_refuses(tmp_path, capsys):
    out = tmp_path / "p"
    args = _parser().parse_args(["random-pipeline", "--like", "tiny", "--output-dir", str(out), "--dtype", "float16",
                                 "--no-progress"])
    assert args.seed == 0
    args.func(args)
    stdout = capsys.readouterr().out
    head, last = stdout.rstrip("\n").rsplit("\n", 1)
    assert json.loads(head)["dtype"] == "float16"
    assert last == f"wrote {out}: unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json"
    weights = load_file(out / "text_encoder" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float16}

    again = _parser().parse_args(["random-pipeline", "--like", "tiny", "--output-dir", str(out)])
    with pytest.raises(ErasediffError, match=f"'{out}' exists and is not empty"):
        again.func(again)


def test_cli_arguments():
    parser = _parser()
    args = parser.parse_args(["random-pipeline", "--output-dir", "x"])
    assert (args.like, args.seed, args.dtype, args.no_progress) == ("sd-v1-4", 0, "float32", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["random-pipeline", "--like", "sd-v9", "--output-dir", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["random-pipeline", "--like", "tiny"])  # --output-dir is required
