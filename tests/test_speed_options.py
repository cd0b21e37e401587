"""The speed options change the speed, not the numbers (docs/speed.md): each against the plain run."""

from __future__ import annotations

import pytest
import torch

from erasediff.build import build_run
from erasediff.errors import ConfigError
from helpers import tiny_config


def weights_after(cfg, n: int = 3) -> torch.Tensor:
    run = build_run(cfg, progress=False)
    for _ in range(n):
        run.step()
    return torch.cat([p.detach().flatten().double() for p in run.state.params])


def close(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor, update_rel: float) -> None:
    assert not torch.equal(a, start)
    assert float((a - b).norm() / (a - start).norm()) <= update_rel


@pytest.fixture(scope="module")
def plain():
    cfg = tiny_config("erasediff", "method.lambda_mode=fixed")
    start = torch.cat([p.detach().flatten().double() for p in build_run(cfg, progress=False).state.params])
    return weights_after(cfg), start


@pytest.mark.parametrize("option,update_rel", [
    ("model.gradient_checkpointing=true", 0.0),  # the same kernels recomputed: bit-identical on CPU
    ("model.channels_last=true", 1e-3),  # another convolution layout: float rounding, amplified by Adam's first steps
    ("train.fused_optimizer=true", 1e-3),  # one fused Adam kernel: float rounding
])
def test_speed_option_keeps_the_step(plain, option, update_rel):
    ref, start = plain
    close(weights_after(tiny_config("erasediff", "method.lambda_mode=fixed", option)), ref, start, update_rel)


def test_gradient_checkpointing_is_on_in_every_block():
    run = build_run(tiny_config("finetune", "model.gradient_checkpointing=true"), progress=False)
    flags = [m.gradient_checkpointing for m in run.state.model.modules() if hasattr(m, "gradient_checkpointing")]
    assert flags and all(flags)
    plain = build_run(tiny_config("finetune"), progress=False)
    assert not any(m.gradient_checkpointing for m in plain.state.model.modules() if hasattr(m, "gradient_checkpointing"))


def test_channels_last_puts_the_conv_weights_in_nhwc():
    run = build_run(tiny_config("finetune", "model.channels_last=true"), progress=False)
    convs = [m.weight for m in run.state.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_tf32_sets_the_cuda_flags():
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
        build_run(tiny_config("finetune"), progress=False)
        assert torch.get_float32_matmul_precision() == "highest"  # off unless asked: torch's default stays
        build_run(tiny_config("finetune", "model.tf32=true"), progress=False)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def test_attention_runs_torch_sdpa():
    """diffusers' default processor (AttnProcessor2_0) calls F.scaled_dot_product_attention: check it is what runs."""
    cfg = tiny_config("finetune", "model.arch.down_block_types=[DownBlock2D, AttnDownBlock2D]",
                      "model.arch.up_block_types=[AttnUpBlock2D, UpBlock2D]", "model.arch.attention_head_dim=8")
    model = build_run(cfg, progress=False).state.model
    processors = {type(p).__name__ for p in model.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        x = torch.randn(2, 1, 16, 16)
        model(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    assert calls


def test_the_old_sd_checkpointing_key_names_where_it_moved():
    with pytest.raises(ConfigError, match="'model.sd.gradient_checkpointing' has moved: set model.gradient_checkpointing"):
        tiny_config("finetune", "model.sd.gradient_checkpointing=true")


@pytest.mark.slow  # torch.compile's first step takes about a minute on 2 CPU cores
def test_compiled_unet_trains_like_the_eager_one(plain):
    ref, start = plain
    close(weights_after(tiny_config("erasediff", "method.lambda_mode=fixed", "model.compile=true")), ref, start, 1e-3)
