"""Baselines (PAPER.md §3): NegGrad ascends, BlindSpot distils from a frozen proxy, SO = L_r + λL_f."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import REPO, SMOKE, TINY, tiny_config

from erasediff.cli import main
from erasediff.config import load_config
from erasediff.errors import ConfigError
from erasediff.build import build_run
from erasediff.losses import denoising_loss, uniform_target_loss
from erasediff.methods.blindspot import feature_modules

CONFIGS = REPO / "DDPM" / "configs"
BASELINES = ("neggrad", "blindspot_proxy", "blindspot", "retrain", "finetune", "so")


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def fixed_loss(run, batch, seed: int = 123) -> float:
    """L on `batch` with fixed noise and timesteps (cond_drop 0), without touching the run's generator."""
    x0, cond = run.state.backbone.encode(batch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return denoising_loss(run.state.backbone, run.state.model, x0, cond, gen)[0].item()


# ------------------------------------------------------------------------------------------ NegGrad
@pytest.mark.parametrize("split", ["forget", "remain"])
def test_neggrad_step_ascends_the_loss_of_its_split(tmp_path, split):
    run = build_run(tiny_config("neggrad", f"method.data={split}"))
    drawn = {"forget": run.data.forget, "remain": run.data.remain}
    assert drawn[split] is not None and drawn["remain" if split == "forget" else "forget"] is None
    assert run.method.needs_forget == (split == "forget") and run.method.needs_remain == (split == "remain")
    batch = next(drawn[split])
    before = fixed_loss(run, batch)
    logs = run.method.update(run.state, *((batch, None) if split == "forget" else (None, batch)))
    assert logs["loss"] < 0 and logs["loss_f" if split == "forget" else "loss_r"] == pytest.approx(-logs["loss"])
    assert fixed_loss(run, batch) > before  # one step of ascent on the same batch and noise


@pytest.mark.parametrize("name", BASELINES)
def test_shipped_baseline_configs_validate(name):
    digits = load_config(CONFIGS / "digits" / f"{name}.yaml")
    smoke = load_config(SMOKE / f"{name}.yaml")
    cifar = load_config(CONFIGS / "cifar10" / f"{name}_airplane.yaml")
    for cfg in (digits, smoke, cifar):
        assert cfg.data.forget_classes == (0,)
        assert cfg.method.name == {"retrain": "finetune", "blindspot_proxy": "finetune", "so": "erasediff"}.get(name, name)
    assert smoke.train.steps <= 5 < digits.train.steps
    from_scratch = name in ("retrain", "blindspot_proxy")
    assert (cifar.model.pretrained is None) == from_scratch and digits.model.pretrained is None
    if name == "retrain":  # as many steps as the Unscrubbed model
        assert digits.train.steps == load_config(CONFIGS / "digits" / "pretrain.yaml").train.steps
        assert cifar.train.steps == load_config(CONFIGS / "cifar10" / "pretrain.yaml").train.steps
    if name == "blindspot":  # the proxy path is the proxy config's default run directory
        for cfg, d, suffix in ((digits, "digits", ""), (cifar, "cifar10", "_airplane")):
            proxy = load_config(CONFIGS / d / f"blindspot_proxy{suffix}.yaml")
            assert cfg.method.proxy == str(proxy.run_dir()) and cfg.method.at_weight == 0.0
            assert proxy.train.steps < load_config(CONFIGS / d / f"retrain{suffix}.yaml").train.steps
    if name == "so":
        assert digits.method.inner_steps == cifar.method.inner_steps == 0
        assert digits.method.lambda_value == cifar.method.lambda_value == 0.1
    if name == "neggrad":
        assert cifar.train.steps == 5 * (5000 // 128) and cifar.method.data == "forget"


# ---------------------------------------------------------------------------------------- BlindSpot
@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory):
    """A tiny random-init model saved as a diffusers model directory (the same init as seed 0 runs)."""
    root = tmp_path_factory.mktemp("proxy")
    run = build_run(tiny_config("blindspot_proxy"))
    run.state.model.save_pretrained(root / "model")
    return root / "model"


def blindspot_run(tmp_path, proxy_dir, *overrides):
    cfg = tiny_config("blindspot", f"method.proxy={proxy_dir}", *overrides)
    return build_run(cfg)


def test_blindspot_forget_term_vanishes_when_the_proxy_is_the_model(tmp_path, proxy_dir):
    run = blindspot_run(tmp_path, proxy_dir, f"model.pretrained={proxy_dir}")
    parts, p_f = run.method.terms(run.state, next(run.data.forget), next(run.data.remain))
    assert p_f == pytest.approx(13 / (13 + 16))
    assert parts["loss_f"].item() == 0.0  # target = own prediction at the same x_t, t, c
    g_f = torch.autograd.grad(parts["loss_f"], run.state.params, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in g_f)
    g_r = torch.autograd.grad(parts["loss_r"], run.state.params, allow_unused=True)
    assert any(g is not None and g.any() for g in g_r)


def test_blindspot_missing_proxy_fails_before_writing(tmp_path, capsys):
    out, missing = tmp_path / "run", tmp_path / "no_such_proxy"
    code = main(["unlearn", "--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, f"method.proxy={missing}",
                 f"model.pretrained={missing}"), "--output-dir", str(out), "--no-progress"])
    assert code == 2 and not out.exists()
    assert f"method.proxy '{missing}' not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="method.proxy"):
        load_config(SMOKE / "blindspot.yaml", ["method.proxy=null"])


def test_blindspot_proxy_is_frozen(tmp_path, proxy_dir):
    run = blindspot_run(tmp_path, proxy_dir, "seed=1")
    proxy = run.method.proxy
    before = {k: v.clone() for k, v in proxy.state_dict().items()}
    model_before = [p.detach().clone() for p in run.state.params]
    for _ in range(2):
        logs = run.method.update(run.state, next(run.data.forget), next(run.data.remain))
    assert logs["loss_f"] > 0
    assert not proxy.training and all(not p.requires_grad and p.grad is None for p in proxy.parameters())
    assert all(torch.equal(before[k], v) for k, v in proxy.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(model_before, run.state.params))
    assert all(id(p) not in {id(q) for q in run.state.params} for p in proxy.parameters())


def test_blindspot_attention_transfer_adds_a_positive_term(tmp_path, proxy_dir):
    run = blindspot_run(tmp_path, proxy_dir, "seed=1", "method.at_weight=2.0")  # proxy ≠ model
    forget, remain = next(run.data.forget), next(run.data.remain)
    start = run.state.generator.get_state()
    total_at, logs = run.method.loss(run.state, forget, remain)
    assert logs["loss_at"] > 0
    assert len(run.method.acts["model"]) == 0  # activations are not kept between steps
    run.state.generator.set_state(start)
    run.method.cfg = replace(run.method.cfg, at_weight=0.0)
    total_plain, _ = run.method.loss(run.state, forget, remain)
    assert total_at.item() - total_plain.item() == pytest.approx(logs["p_f"] * 2.0 * logs["loss_at"], rel=1e-4)
    with pytest.raises(ConfigError, match="down_blocks"):
        feature_modules(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------------------------- SO
def test_so_is_one_adam_step_on_lr_plus_lambda_lf(tmp_path):
    """EraseDiff with inner_steps 0 = Adam on ∇(L_r + λL_f); = EraseDiff with a separate inner optimiser."""
    lam, common = 0.3, ("train.grad_clip=null", "method.shared_timesteps=true")
    so = build_run(tiny_config("so", f"method.lambda_value={lam}", *common))
    sep = build_run(tiny_config("so", f"method.lambda_value={lam}", "method.inner_steps=2", "method.inner_optimizer=separate",
                              "method.inner_lr=0.01", *common))
    forget, remain = next(so.data.forget), next(so.data.remain)
    s, bb = so.state, so.state.backbone
    theta0 = [p.detach().clone() for p in s.params]
    # the loss written by hand with the library's losses and the generator's next draws
    start = s.generator.get_state()
    x_r, c_r = bb.encode(remain)
    x_f, c_f = bb.encode(forget)
    loss_r, t = denoising_loss(bb, s.model, x_r, c_r, s.generator)
    loss_f = uniform_target_loss(bb, s.model, x_f, c_f, t[: x_f.shape[0]], s.generator)
    grads = torch.autograd.grad(loss_r + lam * loss_f, s.params, allow_unused=True)
    s.generator.set_state(start)
    so.method.update(s, forget, remain)
    sep.method.update(sep.state, forget, remain)
    lr, eps = s.cfg.train.lr, s.cfg.train.eps
    for p, p0, g, q in zip(s.params, theta0, grads, sep.state.params):
        g = torch.zeros_like(p0) if g is None else g
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(p.detach(), p0 - lr * g / (g.abs() + eps), rtol=0, atol=1e-7)  # Adam's first step
        torch.testing.assert_close(q.detach(), p.detach(), rtol=0, atol=1e-7)
    assert all(st["step"] == 1 for st in s.optimizer.state.values())  # no inner step touched Adam


# -------------------------------------------------------------------------------------------- CLI
def test_cli_blindspot_two_stages(tmp_path):
    proxy, out = tmp_path / "proxy", tmp_path / "blindspot"
    assert main(["train", "--config", str(SMOKE / "blindspot_proxy.yaml"), *sets(*TINY, "train.steps=2"),
                 "--output-dir", str(proxy), "--no-progress"]) == 0
    assert main(["unlearn", "--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, "train.steps=2", f"method.proxy={proxy}",
                 f"model.pretrained={proxy}"), "--output-dir", str(out), "--no-progress"]) == 0
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["step"] == 2 and {"loss_f", "loss_r", "p_f"} <= set(logs[-1])
    assert json.loads((out / "metrics.json").read_text())["method"] == "blindspot"
    assert Path(out / "model_ema" / "config.json").is_file()
