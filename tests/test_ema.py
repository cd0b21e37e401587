"""EMA: the peers' constant decay, and the optional warm-up for short runs from scratch."""

import pytest
import torch

from erasediff.ema import EMA


def test_constant_decay_and_swap():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()
    ema.update()
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1 - 0.9**2))  # 0.19
    with ema.swapped():
        assert torch.allclose(p, torch.full((3,), 0.19))
    assert torch.equal(p.detach(), torch.ones(3))  # raw weights back after the swap


def test_warmup_forgets_the_initialisation_quickly():
    p = torch.nn.Parameter(torch.zeros(1))
    plain, warm = EMA([p], decay=0.999), EMA([p], decay=0.999, warmup=True)
    with torch.no_grad():
        p.fill_(1.0)
    for _ in range(800):
        plain.update()
        warm.update()
    assert plain.shadow[0].item() == pytest.approx(1 - 0.999**800, abs=1e-4)  # ~0.55: still half init
    assert warm.shadow[0].item() > 0.99
    assert 0.98 < warm.current_decay() < 0.999  # still ramping up: (1 + n)/(10 + n) at n = 800
