"""EraseDiff invariants (docs/method.md): Theorem-1 λ, the inner loop, the forgetting targets."""

import math

import pytest
import torch
from helpers import tiny_config

from erasediff.backbones.class_cond import ClassConditionalBackbone
from erasediff.build import build_run
from erasediff.config import ArchConfig, DiffusionConfig
from erasediff.losses import random_label_target_loss, uniform_target_loss
from erasediff.methods.erasediff import lambda_cosine, lambda_paper


def params_of(run):
    return [p.detach().clone() for p in run.state.params]


def test_lambda_paper_on_hand_made_gradients():
    # g_r·g_q = 1, ‖g_q‖² = 2  ->  λ = max(η − 1/2, 0)
    g_r = [torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])]
    g_q = [torch.tensor([1.0, 1.0]), torch.tensor([[0.0]])]
    assert lambda_paper(g_r, g_q, eta=1.0) == pytest.approx(0.5)
    assert lambda_paper(g_r, g_q, eta=0.1) == 0.0  # aligned enough: no extra push
    # conflicting gradients: g_r·g_q = −2, ‖g_q‖² = 2  ->  λ = η + 1
    assert lambda_paper([torch.tensor([-2.0, 0.0])], [torch.tensor([1.0, 1.0])], eta=0.1) == pytest.approx(1.1)
    # constraint already flat
    assert lambda_paper(g_r, [torch.zeros(2), torch.zeros(1, 1)], eta=0.1) == 0.0


def test_lambda_cosine_is_the_code_variant():
    g_r, g_q = [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]
    assert lambda_cosine(g_r, g_q, eta=1.0) == pytest.approx(1.0 - 1.0 / math.sqrt(2), abs=1e-6)
    # scaling g_q changes the paper λ but not the cosine one
    g_q2 = [torch.tensor([3.0, 3.0])]
    assert lambda_cosine(g_r, g_q2, eta=1.0) == pytest.approx(lambda_cosine(g_r, g_q, eta=1.0), abs=1e-6)
    assert lambda_paper(g_r, g_q2, eta=1.0) != pytest.approx(lambda_paper(g_r, g_q, eta=1.0))


class RecordingModel(torch.nn.Module):
    """Predicts zeros and remembers its inputs: the loss then exposes the regression target."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.inputs = []

    def forward(self, xt, t, cond):
        self.inputs.append((xt.detach().clone(), t.clone(), cond.clone()))
        return torch.zeros_like(xt) + 0 * self.w


def backbone():
    return ClassConditionalBackbone(DiffusionConfig(), ArchConfig(num_classes=10), torch.device("cpu"))


def test_uniform_target_regresses_on_uniform_noise():
    bb, model = backbone(), RecordingModel()
    x0 = torch.zeros(64, 1, 8, 8)
    t = torch.randint(0, 1000, (64,))
    gen = torch.Generator().manual_seed(0)
    loss = uniform_target_loss(bb, model, x0, torch.zeros(64, dtype=torch.long), t, gen)
    xt, t_seen, c_seen = model.inputs[0]
    # x0 = 0 so x̃_t = sqrt(1−ᾱ_t)·ε_f: recover ε_f from the model's input
    sigma = (1 - bb.noise_scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    eps_f = xt / sigma
    assert eps_f.min() >= -1e-5 and eps_f.max() < 1 + 1e-5  # U[0, 1), not N(0, I)
    assert eps_f.mean().item() == pytest.approx(0.5, abs=0.02)
    # the model predicted 0, so the loss is E[ε_f²] = 1/3 for U[0,1) (it would be 1 for N(0, I))
    assert loss.item() == pytest.approx((eps_f**2).mean().item(), rel=1e-4)
    assert loss.item() == pytest.approx(1 / 3, abs=0.02)
    assert torch.equal(t_seen, t) and torch.equal(c_seen, torch.zeros(64, dtype=torch.long))


def test_random_label_target_is_another_class_and_detached():
    bb = backbone()
    gen = torch.Generator().manual_seed(0)
    cond = torch.arange(10).repeat(100)
    other = bb.other_condition(cond, gen)
    assert not torch.any(other == cond)
    assert set(other[cond == 0].tolist()) == set(range(1, 10))  # every other class is reachable

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 1)

        def forward(self, xt, t, c):
            return xt * self.emb(c).view(-1, 1, 1, 1)

    model = Linear()
    x0 = torch.randn(8, 1, 4, 4)
    c = torch.zeros(8, dtype=torch.long)
    loss = random_label_target_loss(bb, model, x0, c, torch.full((8,), 500), gen)
    loss.backward()
    grad = model.emb.weight.grad.squeeze()
    # only the c_f branch (row 0) gets gradient; the target rows (1..9) are detached
    assert grad[0] != 0 and torch.all(grad[1:] == 0)


def test_lambda_zero_outer_step_equals_finetune_step():
    common = ("train.steps=1", "train.ema_decay=null")
    e = build_run(tiny_config("erasediff", *common, "method.lambda_value=0.0", "method.inner_optimizer=separate",
                            "method.remain_cond_drop=0.1"))
    f = build_run(tiny_config("erasediff", *common, "method.name=finetune", "method.cond_drop=0.1",
                            "data.forget_classes=[0]"))
    before = params_of(e)
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(f)))  # same init
    e.method.update(e.state, next(e.data.forget), next(e.data.remain))
    f.method.update(f.state, None, next(f.data.remain))
    after_e, after_f = params_of(e), params_of(f)
    assert any(not torch.equal(a, b) for a, b in zip(before, after_e))  # the step did something
    assert all(torch.equal(a, b) for a, b in zip(after_e, after_f))


@pytest.mark.parametrize("inner_optimizer", ["shared", "separate"])
def test_inner_loop_restores_theta_exactly(inner_optimizer):
    run = build_run(tiny_config("erasediff", f"method.inner_optimizer={inner_optimizer}", "method.inner_steps=3",
                              "train.lr=1e-2"))
    m, s = run.method, run.state
    before = params_of(run)
    seen = []
    real_step = m.inner_opt.step

    def spy():
        real_step()
        seen.append(params_of(run))

    m.inner_opt.step = spy
    m._inner_loop(s)
    assert len(seen) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, seen[-1]))  # φ^K moved away from θ
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(run)))  # θ restored bit for bit
    assert math.isfinite(m.phi)
    if inner_optimizer == "shared":  # the code's only lasting effect: Adam moments carry ∇L_f
        assert all(st["step"].item() == 3 for st in s.optimizer.state.values())
    else:
        assert len(s.optimizer.state) == 0


@pytest.mark.parametrize("mode", ["paper", "cosine"])
def test_automatic_lambda_runs_with_unused_parameters(mode):
    # remain_cond_drop = 0: the null-class row is not in L_r's graph (the official code crashes here)
    run = build_run(tiny_config("erasediff", f"method.lambda_mode={mode}", "method.eta=0.5", "method.remain_cond_drop=0.0"))
    before = params_of(run)
    logs = run.method.update(run.state, next(run.data.forget), next(run.data.remain))
    assert set(logs) >= {"loss_r", "loss_f", "q", "lambda", "phi"}
    assert logs["lambda"] >= 0 and math.isfinite(logs["q"])
    assert any(not torch.equal(a, b) for a, b in zip(before, params_of(run)))


@pytest.mark.parametrize("mode", ["paper", "cosine"])
def test_automatic_lambda_update_is_g_r_plus_lambda_g_q(mode):
    """Alg. 1 lines 6-8: the gradient handed to the optimiser is g_r + λ g_q with λ from Theorem 1 (`paper`)
    or the code's cosine rule, both gradients taken at θ_i on the step's own batches and noise."""
    from erasediff.losses import denoising_loss

    eta = 5.0  # large enough that λ > 0 in both modes: the g_q term is really tested
    run = build_run(tiny_config("erasediff", f"method.lambda_mode={mode}", f"method.eta={eta}", "method.block_size=100",
                                "method.shared_timesteps=true", "train.grad_clip=null"))
    s, m = run.state, run.method
    m.update(s, next(run.data.forget), next(run.data.remain))  # step 1 holds the inner loop; step 2 does not
    forget, remain = next(run.data.forget), next(run.data.remain)
    gen_state, theta = s.generator.get_state(), params_of(run)
    handed = {}
    real_step = s.clip_and_step

    def spy(*args, **kwargs):
        handed["grad"] = [p.grad.detach().clone() for p in s.params]
        return real_step(*args, **kwargs)

    s.clip_and_step = spy
    logs = m.update(s, forget, remain)

    # by hand at θ_i, same noise: L_r and L_f (shared timesteps), their gradients, λ, the combination
    with torch.no_grad():
        for p, t in zip(s.params, theta):
            p.copy_(t)
    s.generator.set_state(gen_state)
    x_r, c_r = s.backbone.encode(remain)
    x_f, c_f = s.backbone.encode(forget)
    loss_r, t = denoising_loss(s.backbone, s.model, x_r, c_r, s.generator, cond_drop=m.cfg.remain_cond_drop)
    loss_f = m.forget_loss(s, x_f, c_f, t[: x_f.shape[0]], s.generator)

    def grads(loss, retain):
        g = torch.autograd.grad(loss, s.params, retain_graph=retain, allow_unused=True)
        return torch.cat([torch.zeros_like(p).flatten() if x is None else x.flatten() for x, p in zip(g, s.params)])

    g_r, g_q = grads(loss_r, True), grads(loss_f, False)
    dot = float(g_r.double() @ g_q.double())
    if mode == "paper":  # Theorem 1: λ = max(η − <g_r, g_q> / ‖g_q‖², 0)
        lam = max(eta - dot / float(g_q.double() @ g_q.double()), 0.0)
    else:  # official code: λ = max(η − cos(g_r, g_q), 0)
        lam = max(eta - dot / (float(g_r.double().norm()) * float(g_q.double().norm()) + 1e-8), 0.0)
    assert lam > 0
    assert logs["lambda"] == pytest.approx(lam, rel=1e-4)
    got = torch.cat([g.flatten() for g in handed["grad"]])
    torch.testing.assert_close(got, g_r + lam * g_q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("target,shared", [("uniform", False), ("random_label", True)])
def test_shared_timesteps_default_follows_the_official_code_of_each_target(target, shared):
    """The official uniform-noise code draws its own t for the forget batch; only its random-label rewrite
    reuses the remaining batch's t (docs/method.md "Shared timesteps")."""
    run = build_run(tiny_config("erasediff", f"method.target={target}", "method.block_size=100"))
    assert run.cfg.method.shared_timesteps is shared  # resolved, so config.resolved.yaml records it
    m, s = run.method, run.state
    m.update(s, next(run.data.forget), next(run.data.remain))  # the inner loop's step
    seen = []
    real = m.forget_loss
    m.forget_loss = lambda state, x0, cond, t, gen: (seen.append(t), real(state, x0, cond, t, gen))[1]
    m.update(s, next(run.data.forget), next(run.data.remain))
    assert (seen[0] is not None) is shared


def test_block_size_controls_inner_loop_frequency():
    run = build_run(tiny_config("erasediff", "method.block_size=2"))
    calls = []
    inner = run.method._inner_loop
    run.method._inner_loop = lambda s: (calls.append(s.step), inner(s))
    for _ in range(5):
        run.method.update(run.state, next(run.data.forget), next(run.data.remain))
        run.state.step += 1
    assert calls == [0, 2, 4]


def test_unconditional_backbone_runs_uniform_target_and_refuses_random_label(tmp_path):
    from erasediff.errors import ConfigError

    run = build_run(tiny_config("erasediff", "model.backbone=uncond", "method.block_size=1", "method.target=uniform"))
    assert type(run.state.model).__name__ == "UNet2DModel"
    before = params_of(run)
    logs = run.method.update(run.state, next(run.data.forget), next(run.data.remain))
    assert math.isfinite(logs["loss_f"]) and any(not torch.equal(a, b) for a, b in zip(before, params_of(run)))
    with pytest.raises(ConfigError, match="valid targets here: uniform"):
        build_run(tiny_config("erasediff", "model.backbone=uncond", "method.target=random_label"))
