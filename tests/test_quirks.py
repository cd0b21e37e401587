"""The peers' evaluation quirks: what each one does to images or to the metric dict."""

import pytest
import torch
from torchvision.utils import make_grid

from erasediff.errors import ErasediffError
from erasediff.metrics import (
    EvalQuirks,
    bgr,
    minmax_stretch,
    swap_precision_recall,
    uint8_cast,
)


def _images(n=4, c=3, size=6, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.9


def test_minmax_stretch_matches_torchvision_save_image_per_image():
    x = _images()
    x[1] *= 0.1  # a low-contrast image gets stretched on its own
    out = minmax_stretch(x)
    for i in range(len(x)):
        # save_image(x[i], normalize=True) normalises through make_grid: one image, no padding.
        expected = make_grid(x[i:i + 1].clone(), normalize=True, padding=0) * 2 - 1
        torch.testing.assert_close(out[i], expected)
        assert out[i].min() == pytest.approx(-1.0) and out[i].max() == pytest.approx(1.0)
    flat = minmax_stretch(torch.full((1, 3, 4, 4), 0.3))
    assert torch.isfinite(flat).all()


def test_bgr_reverses_channels_and_is_its_own_inverse():
    x = _images()
    torch.testing.assert_close(bgr(x)[:, 0], x[:, 2], rtol=0, atol=0)
    torch.testing.assert_close(bgr(x)[:, 1], x[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(bgr(bgr(x)), x, rtol=0, atol=0)
    grey = _images(c=1)
    torch.testing.assert_close(bgr(grey), grey, rtol=0, atol=0)


def test_uint8_cast_collapses_to_three_intensities():
    x = torch.tensor([-1.0, -0.999, -0.5, 0.0, 0.5, 0.999, 1.0]).reshape(1, 1, 1, 7)
    expected_u8 = torch.tensor([255, 0, 0, 0, 0, 0, 1]).reshape(1, 1, 1, 7)
    torch.testing.assert_close(uint8_cast(x), expected_u8.float() / 127.5 - 1)
    # On random [-1, 1] images (with exact ±1 present) it equals PyTorch's own cast that the peers ran.
    y = _images(8).clamp(-1, 1)
    y[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(uint8_cast(y), y.to(torch.uint8).float() / 127.5 - 1)
    assert ((uint8_cast(y) + 1) * 127.5).round().unique().tolist() == [0.0, 1.0, 255.0]


def test_swap_precision_recall_exchanges_only_those_keys():
    m = {"precision": 0.787, "recall": 0.392, "fid": 9.69}
    assert swap_precision_recall(m) == {"precision": 0.392, "recall": 0.787, "fid": 9.69}
    assert m["precision"] == 0.787  # the input is not modified
    with pytest.raises(ErasediffError, match="recall"):
        swap_precision_recall({"precision": 1.0})


def test_eval_quirks_default_is_the_standard_protocol():
    x, m = _images(), {"precision": 0.4, "recall": 0.8}
    q = EvalQuirks()
    assert q.apply(x) is x and q.apply_metrics(m) == m
    assert not q.is_on_reference and q.inception_dims == 2048


def test_eval_quirks_presets_reproduce_the_papers_protocols():
    x = _images()
    t1 = EvalQuirks.sa_table1()
    torch.testing.assert_close(t1.apply(x), bgr(minmax_stretch(x)))
    assert t1.apply_metrics({"precision": 0.4, "recall": 0.8}) == {"precision": 0.8, "recall": 0.4}
    assert t1.is_on_reference
    t4 = EvalQuirks.sd_table4()
    torch.testing.assert_close(t4.apply(x), uint8_cast(x))
    assert t4.inception_dims == 64
    with pytest.raises(ErasediffError, match="float"):
        t4.apply(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
