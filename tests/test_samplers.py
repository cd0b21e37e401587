"""The one sampler (docs/evaluation.md "Sampling for evaluation"): classifier-free guidance in one batched
pass, deterministic samplers, a stop after k steps, and decoding in the backbone's space (pixels, latents)."""

import os
from pathlib import Path

import pytest
import torch
from sd_fixtures import nudity_folder, tiny_pipeline  # noqa: F401  (pytest fixtures)

from erasediff.backbones.class_cond import ClassConditionalBackbone
from erasediff.config import ArchConfig, DiffusionConfig, SampleConfig
from erasediff.experiment import load_config
from erasediff.samplers import (
    class_noise,
    sample,
    sample_classes,
    sampling_timesteps,
    unit_generator,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SD_SMOKE = Path(__file__).resolve().parents[1] / "StableDiffusion" / "configs" / "smoke"

ARCH = ArchConfig(
    sample_size=8, in_channels=1, out_channels=1, num_classes=10, block_out_channels=(16, 32),
    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    mid_block_attention=False, norm_num_groups=8, dropout=0.0,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    bb = ClassConditionalBackbone(DiffusionConfig(), ARCH, torch.device("cpu"))
    model = bb.build_model().eval()
    with torch.no_grad():  # move away from the zero-initialised output conv so outputs depend on c
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return bb, model


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


@pytest.mark.parametrize("convention", ["sa", "diffusers"])
def test_batched_cfg_equals_two_passes(setup, convention):
    bb, model = setup
    x = torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    c = torch.tensor([0, 1, 2, 3, 4, 9])
    w = 2.0
    counting = CountingModel(model)
    with torch.no_grad():
        guided = bb.guided_eps(counting, x, t, c, SampleConfig(guidance=w, guidance_convention=convention))
        eps_c = model(x, t, c)
        eps_null = model(x, t, torch.full_like(c, 10))
    assert counting.calls == 1  # cond and null stacked into one forward
    expected = (1 + w) * eps_c - w * eps_null if convention == "sa" else eps_null + w * (eps_c - eps_null)
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eps_c, eps_null)  # guidance is not a no-op here


def test_sa_w2_equals_diffusers_w3(setup):
    bb, model = setup
    x, t, c = torch.randn(4, 1, 8, 8), torch.full((4,), 300), torch.arange(4)
    with torch.no_grad():
        a = bb.guided_eps(model, x, t, c, SampleConfig(guidance=2.0, guidance_convention="sa"))
        b = bb.guided_eps(model, x, t, c, SampleConfig(guidance=3.0, guidance_convention="diffusers"))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        SampleConfig(sampler="ddim", steps=5, eta=0.0, batch_size=7),
        SampleConfig(sampler="ddim", steps=5, eta=1.0, batch_size=7),
        SampleConfig(sampler="ddpm", batch_size=20),
    ],
    ids=["ddim", "ddim-eta1", "ddpm"],
)
def test_samplers_are_deterministic(setup, cfg):
    bb, model = setup
    classes, n = [0, 3, 7], 4
    if cfg.sampler == "ddpm":  # ancestral sampling walks all T steps: use a T = 50 schedule here
        bb = ClassConditionalBackbone(DiffusionConfig(num_train_timesteps=50), ARCH, torch.device("cpu"))
    a, la = sample_classes(bb, model, classes, n, (1, 8, 8), cfg, progress=False)
    b, lb = sample_classes(bb, model, classes, n, (1, 8, 8), cfg, progress=False)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (len(classes) * n, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert not a.requires_grad
    c, _ = sample_classes(bb, model, classes, n, (1, 8, 8), cfg.model_copy(update={"seed": cfg.seed + 1}),
                          progress=False)
    assert not torch.equal(a, c)


def test_same_noise_per_class_whatever_else_is_sampled(setup):
    bb, model = setup
    cfg = SampleConfig(sampler="ddim", steps=4, batch_size=100)
    only3, _ = sample_classes(bb, model, [3], 3, (1, 8, 8), cfg, progress=False)
    many, labels = sample_classes(bb, model, [0, 3, 5], 3, (1, 8, 8), cfg, progress=False)
    # batch composition changes float rounding only (~1e-4 after 3x guidance), not the noise
    torch.testing.assert_close(many[labels == 3], only3, atol=1e-3, rtol=0)


def test_stop_after_k_steps_and_the_pixel_decode(setup):
    bb, model = setup
    cfg = SampleConfig(sampler="ddim", steps=4, guidance=2.0)
    noise = torch.randn(3, *bb.sample_shape, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([1, 4, 4])
    full = sample(bb, model, c, noise, cfg)
    assert torch.equal(sample(bb, model, c, noise, cfg, stop_after=4), full)  # all n steps: x_0, undecoded
    assert torch.equal(sample(bb, model, c, noise, cfg, stop_after=0), noise)
    partial = [sample(bb, model, c, noise, cfg, stop_after=k) for k in (1, 2, 3)]
    assert all(not torch.equal(a, b) for a, b in zip([noise, *partial], [*partial, full]))
    with pytest.raises(ValueError, match=r"stop_after must be in \[0, 4\]"):
        sample(bb, model, c, noise, cfg, stop_after=5)
    assert sampling_timesteps(bb, cfg).tolist() == [750, 500, 250, 0]  # "leading" spacing, T/n apart
    # pixels are images: the pixel decode only clamps, and only the final images are clamped
    assert full.abs().max() > 1 and torch.equal(bb.decode(full), full.clamp(-1, 1))
    assert bb.sample_shape == (1, 8, 8)
    model.train()  # the sampler runs the model in eval mode and gives its mode back
    torch.testing.assert_close(sample(bb, model, c, noise, cfg), full, atol=0, rtol=0)
    assert model.training
    model.eval()


def test_latent_model_samples_latents_and_decodes_them_with_the_vae(tiny_pipeline, nudity_folder):
    """Stable Diffusion through the same sampler: noise of the latent shape, prompt ids as conditions,
    the VAE decodes unclamped latents; image i of prompt c does not depend on the other prompts sampled."""
    from erasediff.backbones import build_backbone

    cfg_run = load_config(SD_SMOKE / "erasediff_u.yaml", [f"model.pretrained={tiny_pipeline}", f"data.root={nudity_folder}"])
    bb = build_backbone(cfg_run, torch.device("cpu"))
    model = bb.load_model(str(tiny_pipeline))
    cfg = SampleConfig(sampler="ddim", steps=3, guidance=4.0, guidance_convention="diffusers", batch_size=2)
    images, labels = sample_classes(bb, model, [0, 2], 3, bb.sample_shape, cfg, progress=False)
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 0, 0, 2, 2, 2]
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    alone, _ = sample_classes(bb, model, [2], 3, bb.sample_shape, cfg, progress=False)
    assert torch.equal(alone, images[3:])
    # the first unit of prompt 2 by hand: its class noise in latent space, the unit's generator, the VAE
    noise = class_noise([2], 3, bb.sample_shape, cfg.seed)[:2]
    z = sample(bb, model, torch.tensor([2, 2]), noise, cfg, generator=unit_generator(cfg.seed, 2, 0, bb.device))
    assert z.shape == (2, *bb.sample_shape) == (2, 4, 8, 8) and z.abs().max() > 1  # latents are never clamped
    assert torch.equal(bb.decode(z), images[3:5])
