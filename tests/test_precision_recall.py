"""Improved precision/recall (Kynkäänniemi et al. 2019) on feature vectors."""

import numpy as np
import pytest
import torch

from erasediff.errors import ErasediffError
from erasediff.metrics import knn_radii, precision_recall


def _points(n, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_identical_sets_have_full_precision_and_recall():
    x = _points(300)
    out = precision_recall(x, x.clone(), k=3, batch_size=64)
    assert (out["precision"], out["recall"]) == (1.0, 1.0)
    assert (out["k"], out["n_real"], out["n_fake"]) == (3, 300, 300)


def test_a_distant_fake_set_has_zero_precision_and_recall():
    out = precision_recall(_points(200), _points(150, seed=1) + 100.0)
    assert out["precision"] == 0.0 and out["recall"] == 0.0


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = _points(400)
    fake = real[torch.tensor([3, 50, 120])].repeat(40, 1)  # 120 samples on 3 real points
    out = precision_recall(real, fake)
    assert out["precision"] == 1.0
    assert out["recall"] <= 0.05, out


def test_hand_computed_one_dimensional_example():
    # k = 1: real points 0..4 have radius 1; fake points 0.5, 4.9, 10 have radii 4.4, 4.4, 5.1.
    # Precision: 0.5 (near 0) and 4.9 (near 4) are inside, 10 is not -> 2/3.
    # Recall: real 0..4 lie within 4.4 of 0.5 or 4.9 -> 1; adding a real point at 20 (radius 16 from 4)
    # leaves it outside every fake ball -> 5/6, and puts 10 inside the ball of 20 (radius 16) -> precision 1.
    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = np.array([[0.5], [4.9], [10.0]])
    out = precision_recall(real, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0
    out = precision_recall(np.vstack([real, [[20.0]]]), fake, k=1)
    assert out["precision"] == 1.0 and out["recall"] == pytest.approx(5 / 6)
    torch.testing.assert_close(knn_radii(torch.tensor(fake, dtype=torch.float32), k=1), torch.tensor([4.4, 4.4, 5.1]))


def test_result_does_not_depend_on_the_block_size():
    real, fake = _points(157, seed=2), _points(93, seed=3) * 1.3 + 0.2
    full = precision_recall(real, fake, batch_size=10_000)
    assert 0.0 < full["precision"] < 1.0 and 0.0 < full["recall"] < 1.0
    for bs in (1, 7, 64):
        small = precision_recall(real, fake, batch_size=bs)
        assert (small["precision"], small["recall"]) == (full["precision"], full["recall"])


def test_bad_input_is_refused():
    with pytest.raises(ErasediffError, match="more than 3 rows in fake_features"):
        precision_recall(_points(10), _points(3))
    with pytest.raises(ErasediffError, match="dimensions differ"):
        precision_recall(_points(10, d=4), _points(10, d=5))
    with pytest.raises(ErasediffError, match="k must be"):
        precision_recall(_points(10), _points(10), k=0)
    with pytest.raises(ErasediffError, match="2-D"):
        precision_recall(np.zeros(10), _points(10))
