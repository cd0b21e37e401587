"""ESD (docs/baselines.md "ESD"): the partial trajectory and the distillation target against hand
computations, for every `anchor` / `sample_with`, on Stable Diffusion latents and on pixels."""

import os
from pathlib import Path

import pytest
import torch
from helpers import SMOKE, TINY
from sd_fixtures import nudity_folder, tiny_pipeline  # noqa: F401  (pytest fixtures)

from erasediff.build import build_run
from erasediff.experiment import load_config
from erasediff.methods import esd as esd_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SD_SMOKE = Path(__file__).resolve().parents[1] / "StableDiffusion" / "configs" / "smoke"
ESD_KEYS = ["method.ddim_steps=4", "method.start_guidance=2.5", "method.negative_guidance=1.5"]
OPTIONS = [(a, s) for a in ("null", "concept") for s in ("current", "frozen")]


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module", params=["sd", "digits"])
def esd_run(request, tmp_path_factory):
    """A built ESD run whose trained model differs from its frozen copy ε* (as after some steps), so that
    `sample_with` matters, and neither predicts zeros (the digits UNet's output conv starts at zero)."""
    if request.param == "sd":
        pipeline, data = request.getfixturevalue("tiny_pipeline"), request.getfixturevalue("nudity_folder")
        cfg = load_config(SD_SMOKE / "esd_u.yaml", [f"model.pretrained={pipeline}", f"data.root={data}", *ESD_KEYS])
    else:  # ESD is a Stable Diffusion baseline, but nothing in it depends on the family
        path = tmp_path_factory.mktemp("esd") / "esd_digits.yaml"
        path.write_text(f"base: {SMOKE / 'erasediff.yaml'}\nmethod:\n  name: esd\n")
        cfg = load_config(path, [*TINY, *ESD_KEYS, "data.forget_batch_size=3"])
    run = build_run(cfg, progress=False)
    _perturb(run.method.frozen, 1)
    _perturb(run.state.model, 2)
    return run


def _seed_with_k(n: int, at_least: int) -> int:
    """A generator seed whose first draw k ~ U{0..n−1} is >= at_least (a trajectory with real steps)."""
    return next(s for s in range(1000)
                if int(torch.randint(0, n, (1,), generator=torch.Generator().manual_seed(s))) >= at_least)


def _alphas_cumprod(d) -> torch.Tensor:
    """ᾱ_t of the config's β schedule, in float64 (docs/method.md "Notation")."""
    if d.beta_schedule == "scaled_linear":
        betas = torch.linspace(d.beta_start ** 0.5, d.beta_end ** 0.5, d.num_train_timesteps, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(d.beta_start, d.beta_end, d.num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def esd_by_hand(run, c: torch.Tensor, seed: int, anchor: str, sample_with: str):
    """Steps 1-3 of ESD written out: draws k, z_T, t from a generator seeded `seed`; DDIM (η = 0, "leading"
    spacing τ_i = i·T/n, ᾱ = 1 after the last step) with CFG s from two separate forwards; the target.
    Returns (k, z (B, *shape), t (B,), target (B, *shape))."""
    bb, m = run.state.backbone, run.method.cfg
    n, T, s, eta = m.ddim_steps, bb.num_timesteps, m.start_guidance, m.negative_guidance
    abar = _alphas_cumprod(run.cfg.diffusion)
    sampler = run.state.model if sample_with == "current" else run.method.frozen
    null = bb.null_condition(c.shape[0])
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(0, n, (1,), generator=g))
    z = torch.randn((c.shape[0], *bb.sample_shape), generator=g)
    taus = [i * (T // n) for i in reversed(range(n))]
    was_training = sampler.training
    sampler.eval()
    with torch.no_grad():
        for tau in taus[:k]:
            tb = torch.full((c.shape[0],), tau)
            e_c, e_0 = bb.predict(sampler, z, tb, c), bb.predict(sampler, z, tb, null)
            eps = e_0 + s * (e_c - e_0)
            a_t = float(abar[tau])
            a_prev = float(abar[tau - T // n]) if tau - T // n >= 0 else 1.0
            x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            z = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        t = torch.randint(taus[k], min(taus[k] + T // n, T), (c.shape[0],), generator=g)
        e_c, e_0 = bb.predict(run.method.frozen, z, t, c), bb.predict(run.method.frozen, z, t, null)
        target = (e_0 if anchor == "null" else e_c) - eta * (e_c - e_0)
    sampler.train(was_training)
    return k, z, t, target


def esd_loss_parts(run, forget, seed: int, monkeypatch):
    """Run.method.loss once from `seed`; return (loss, parts, z, t, target) as the method computed them."""
    seen = {}
    real_mse, real_partial = esd_module.eps_mse, run.method.partial_sample
    monkeypatch.setattr(esd_module, "eps_mse", lambda pred, target: seen.update(target=target) or real_mse(pred, target))
    monkeypatch.setattr(run.method, "partial_sample", lambda st, c: seen.setdefault("zt", real_partial(st, c)))
    run.state.generator.manual_seed(seed)
    loss, parts = run.method.loss(run.state, forget, None)
    monkeypatch.undo()
    return loss, parts, *seen["zt"], seen["target"]


@pytest.mark.parametrize("anchor, sample_with", OPTIONS)
def test_target_and_loss_match_a_hand_computation(esd_run, anchor, sample_with, monkeypatch):
    run = esd_run
    run.method.cfg = run.method.cfg.model_copy(update={"anchor": anchor, "sample_with": sample_with})
    forget = next(run.data.forget)
    c = run.state.backbone.condition_for_classes(forget[1])
    seed = _seed_with_k(run.method.cfg.ddim_steps, 2)
    loss, parts, z, t, target = esd_loss_parts(run, forget, seed, monkeypatch)
    k, z_hand, t_hand, target_hand = esd_by_hand(run, c, seed, anchor, sample_with)
    n, T = run.method.cfg.ddim_steps, run.state.backbone.num_timesteps
    assert k >= 2 and torch.equal(t, t_hand)
    assert t.min() >= (n - 1 - k) * T // n and t.max() < (n - k) * T // n  # in the bin of τ_k = (n−1−k)·T/n
    torch.testing.assert_close(z, z_hand, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(target, target_hand, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        pred = run.state.backbone.predict(run.state.model, z_hand, t_hand, c)
    assert loss.item() == pytest.approx(float((pred - target_hand).square().mean()), rel=1e-4)
    assert parts["t"] == pytest.approx(float(t_hand.float().mean()))


def test_each_option_changes_what_it_should(esd_run, monkeypatch):
    """`sample_with` changes z (the sampling UNet) but not the target's formula; `anchor` changes the target
    only; so the four options give four different targets from the same draws."""
    run = esd_run
    forget = next(run.data.forget)
    seed = _seed_with_k(run.method.cfg.ddim_steps, 2)
    out = {}
    for anchor, sample_with in OPTIONS:
        run.method.cfg = run.method.cfg.model_copy(update={"anchor": anchor, "sample_with": sample_with})
        out[anchor, sample_with] = esd_loss_parts(run, forget, seed, monkeypatch)[2:]
    for sample_with in ("current", "frozen"):
        z_null, t_null, _ = out["null", sample_with]
        z_concept, t_concept, _ = out["concept", sample_with]
        assert torch.equal(z_null, z_concept) and torch.equal(t_null, t_concept)
    assert not torch.allclose(out["null", "current"][0], out["null", "frozen"][0])
    targets = [target for _, _, target in out.values()]
    assert all(not torch.allclose(a, b) for i, a in enumerate(targets) for b in targets[i + 1:])


def test_the_loss_trains_the_model_on_the_sampled_latents(esd_run):
    """z comes out of the sampler as an ordinary tensor (no inference-mode tensor): the loss backpropagates."""
    run = esd_run
    run.state.model.zero_grad(set_to_none=True)
    run.state.generator.manual_seed(_seed_with_k(run.method.cfg.ddim_steps, 1))
    loss, _ = run.method.loss(run.state, next(run.data.forget), None)
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in run.state.params)
    run.state.model.zero_grad(set_to_none=True)


def test_sampler_stopped_at_k_is_the_former_esd_loop(esd_run):
    """The one sampler with stop_after=k gives bit for bit the latents of ESD's former own loop (k DDIM steps of
    scheduler.step on the batched CFG ε, diffusers convention, η = 0), for every k."""
    from erasediff.samplers import make_scheduler, sample, sampling_timesteps

    run = esd_run
    bb, sample_cfg, n = run.state.backbone, run.method.sample_cfg, run.method.cfg.ddim_steps
    c = bb.condition_for_classes(next(run.data.forget)[1])
    z_T = torch.randn((c.shape[0], *bb.sample_shape), generator=torch.Generator().manual_seed(3))
    was_training = run.state.model.training
    assert len(sampling_timesteps(bb, sample_cfg)) == n
    for k in range(n + 1):
        sched = make_scheduler(bb, sample_cfg)  # the former loop, as it was written in methods/esd.py
        z = z_T.clone()
        with torch.no_grad():
            for tau in sched.timesteps[:k]:
                t_batch = torch.full((z.shape[0],), int(tau), dtype=torch.long)
                z = sched.step(bb.guided_eps(run.state.model.eval(), z, t_batch, c, sample_cfg), tau, z, eta=0.0).prev_sample
        ours = sample(bb, run.state.model, c, z_T, sample_cfg, stop_after=k)
        assert torch.equal(ours, z), k
        assert torch.equal(ours, z_T) == (k == 0)
        run.state.model.train(was_training)
