"""Stable Diffusion backbone and SD unlearning runs on a tiny offline pipeline (CPU, seconds)."""

import os
from pathlib import Path

import pytest
import torch
from sd_fixtures import nudity_folder, tiny_pipeline  # noqa: F401  (pytest fixtures)

from erasediff.cli import main
from erasediff.errors import ConfigError, ErasediffError
from erasediff.experiment import load_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "StableDiffusion" / "configs" / "smoke"


def sd_config(name: str, pipeline: Path, data: Path, *overrides: str):
    return load_config(SMOKE / f"{name}.yaml", [f"model.pretrained={pipeline}", f"data.root={data}", *overrides])


def unlearn(cfg, run_dir: Path):
    """Run `cfg` for its 2 steps; return (run, names of the UNet parameters that changed)."""
    from erasediff.build import build_run
    from erasediff.rundir import claim_run_dir

    run = build_run(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in run.state.model.named_parameters()}
    with claim_run_dir(run_dir, resume=False) as claim:
        run.execute(claim, progress=False)
    changed = {n for n, p in run.state.model.named_parameters() if not torch.equal(p, before[n])}
    return run, changed


# ------------------------------------------------------------------------------ parameter filters
def test_trainable_parameter_sets_in_diffusers_names():
    from diffusers import UNet2DConditionModel

    from erasediff.backbones.stable_diffusion import select_parameters

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    named = list(unet.named_parameters())
    every = {n for n, _ in named}
    sel = {m: {n for n, _ in select_parameters(named, m)} for m in ("full", "xattn", "noxattn", "selfattn")}
    assert sel["full"] == every
    assert sel["xattn"] == {n for n in every if ".attn2." in n} and sel["xattn"]
    assert {n.split(".attn2.")[1].rsplit(".", 1)[0] for n in sel["xattn"]} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert sel["selfattn"] == {n for n in every if ".attn1." in n} and sel["selfattn"]
    # ESD-u / EraseDiff-u: no cross-attention, no time embedding, no output layers (docs/peers.md "ESD") ...
    excluded = every - sel["noxattn"]
    assert excluded == sel["xattn"] | {n for n in every if n.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))}
    assert {"conv_out.weight", "conv_norm_out.weight", "time_embedding.linear_1.weight"} <= excluded
    # ... but per-block time projections (CompVis emb_layers), norms, self-attention and conv_in train
    kept = sel["noxattn"]
    assert "conv_in.weight" in kept
    assert any("time_emb_proj" in n for n in kept) and any(".attn1." in n for n in kept)
    assert any(n.endswith("norm1.weight") for n in kept) and any(".ff." in n for n in kept)
    assert not sel["xattn"] & sel["noxattn"]


# --------------------------------------------------------------------------------- the backbone
def test_backbone_latents_embeddings_and_surrogate_target(tiny_pipeline, nudity_folder):
    from erasediff.backbones import build_backbone
    from erasediff.losses import random_label_target_loss

    cfg = sd_config("erasediff_u", tiny_pipeline, nudity_folder)
    bb = build_backbone(cfg, torch.device("cpu"))
    assert bb.conditional and bb.sample_shape == (4, 8, 8)  # 16 px / 2 (tiny VAE has one downsampling)
    assert bb.embeddings.shape[:2] == (len(cfg.data.prompts) + 2, 16)  # prompts + "" + surrogate
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    z, c = bb.encode((images, torch.tensor([0, 2, 4])))
    assert z.shape == (3, 4, 8, 8) and c.tolist() == [0, 2, 4]
    model = bb.load_model(str(tiny_pipeline))
    gen = torch.Generator().manual_seed(0)
    # other_condition is the surrogate prompt for every sample; EraseDiff's random_label target is
    # exactly the detached prediction for it at the same z_t, t, ε (docs/method.md "Forgetting targets")
    assert bb.other_condition(c, gen).tolist() == [bb.surrogate_id] * 3
    t = torch.tensor([10, 500, 900])
    loss = random_label_target_loss(bb, model, z, c, t, torch.Generator().manual_seed(1))
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    zt = bb.add_noise(z, eps, t)
    with torch.no_grad():
        target = model(zt, t, encoder_hidden_states=bb.embeddings[[bb.surrogate_id] * 3]).sample
        pred = model(zt, t, encoder_hidden_states=bb.embeddings[c]).sample
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, target), atol=1e-6)
    assert bb.drop_condition(c, 0.999, gen).tolist() == [bb.null_id] * 3
    assert bb.decode(z).shape == (3, 3, 16, 16)


# ------------------------------------------------------------------------------------ the runs
@pytest.mark.parametrize("name", ["erasediff_u", "erasediff_x", "esd_u", "esd_x", "finetune_u", "neggrad_u"])
def test_sd_methods_train_exactly_the_selected_parameters(name, tiny_pipeline, nudity_folder, tmp_path):
    extra = []
    if name.endswith("_x"):  # Imagenette configs: reuse the nudity images under Imagenette-like prompts
        extra = ["data.prompts=[nudity, naked, erotic, sexual, a person wearing clothes]",
                 "data.forget_prompts=[nudity]", "model.sd.surrogate_prompt=a person wearing clothes"]
    cfg = sd_config(name, tiny_pipeline, nudity_folder, *extra)
    run, changed = unlearn(cfg, tmp_path / name)
    assert changed == set(run.state.param_names) and changed
    assert (tmp_path / name / "samples").is_dir() and (tmp_path / name / "metrics.json").is_file()


def test_salun_mask_then_unlearn_and_stock_pipeline_loads_the_unet(tiny_pipeline, nudity_folder, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file

    from erasediff.methods.salun import compute_saliency_mask

    cfg = sd_config("salun", tiny_pipeline, nudity_folder)
    mask_path = tmp_path / "mask.safetensors"
    info = compute_saliency_mask(cfg, mask_path, progress=False)
    assert info["ones"] == info["parameters"] // 2
    cfg = sd_config("salun", tiny_pipeline, nudity_folder, f"method.mask={mask_path}")
    run, changed = unlearn(cfg, tmp_path / "salun")
    mask = load_file(str(mask_path))
    masked_in = {n for n, k in mask.items() if bool(k.any())}
    assert changed and changed <= masked_in  # masked-out weights never move (Adam, no weight decay)
    # the run's model/ is a UNet folder that a stock pipeline loads in place of its own
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "salun" / "model"))
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline), unet=unet, safety_checker=None)
    image = pipe("nudity", num_inference_steps=2, height=16, width=16,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16)
    for n, p in unet.named_parameters():
        assert torch.equal(p, dict(run.state.model.named_parameters())[n])


# ------------------------------------------------------------------------------------ bad input
def test_model_path_without_unet_is_a_clear_error(tiny_pipeline, nudity_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["unlearn", "--config", str(SMOKE / "erasediff_u.yaml"), "--set", f"model.pretrained={empty}",
                 "--set", f"data.root={nudity_folder}", "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "holds no UNet" in err and err.startswith("error:")
    assert not (tmp_path / "run").exists()
    # a UNet folder alone is not a pipeline: the VAE / text encoder must come from model.sd.pipeline
    with pytest.raises(ConfigError, match="lacks vae/"):
        from erasediff.backbones import build_backbone

        build_backbone(sd_config("erasediff_u", tiny_pipeline / "unet", nudity_folder), torch.device("cpu"))
    cfg = sd_config("erasediff_u", tiny_pipeline / "unet", nudity_folder, f"model.sd.pipeline={tiny_pipeline}")
    run, changed = unlearn(cfg, tmp_path / "from_unet_dir")
    assert changed == set(run.state.param_names)


def test_surrogate_equal_to_a_forgotten_prompt_is_refused(tiny_pipeline, nudity_folder, tmp_path, capsys):
    code = main(["unlearn", "--config", str(SMOKE / "erasediff_u.yaml"), "--set", f"model.pretrained={tiny_pipeline}",
                 "--set", f"data.root={nudity_folder}", "--set", "model.sd.surrogate_prompt=naked",
                 "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "surrogate_prompt 'naked' is a forgotten prompt" in err
    assert not (tmp_path / "run").exists()


def test_missing_surrogate_is_refused_before_the_run_directory_exists(tiny_pipeline, nudity_folder, tmp_path, capsys):
    code = main(["unlearn", "--config", str(SMOKE / "erasediff_u.yaml"), "--set", f"model.pretrained={tiny_pipeline}",
                 "--set", f"data.root={nudity_folder}", "--set", "model.sd.surrogate_prompt=null",
                 "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "needs a surrogate prompt: set model.sd.surrogate_prompt" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_method_and_bad_prompt_config(tiny_pipeline, nudity_folder, capsys):
    code = main(["unlearn", "--config", str(SMOKE / "erasediff_u.yaml"), "--set", "method.name=forget_everything"])
    assert code == 2 and "unknown method 'forget_everything'" in capsys.readouterr().err
    with pytest.raises(ErasediffError, match="not in data.prompts"):
        sd_config("erasediff_u", tiny_pipeline, nudity_folder, "data.forget_prompts=[nude]")
    with pytest.raises(ErasediffError, match="apply to dataset prompt_folder only"):
        load_config(REPO / "DDPM" / "configs" / "digits" / "erasediff.yaml", ["data.prompts=[a]"])
