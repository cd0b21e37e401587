"""Weight distance to the Retrain model: raw and relative L2 over matching parameters."""

import math

import pytest
import torch

from erasediff.errors import ErasediffError
from erasediff.metrics import weight_distance


def test_hand_computed_distance_on_state_dicts():
    ref = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])}
    a = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([2.0])}
    out = weight_distance(a, ref)
    assert out["l2"] == pytest.approx(math.sqrt(9 + 16 + 4))
    assert out["relative_l2"] == pytest.approx(math.sqrt(29) / 5)  # relative to the reference's norm
    assert (out["n_params"], out["n_tensors"], out["n_unmatched"]) == (3, 2, 0)
    assert weight_distance(ref, ref)["l2"] == 0.0


def test_modules_compare_parameters_and_skip_mismatches():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    delta = torch.zeros(3, 4)
    delta[1, 2] = 0.5
    with torch.no_grad():
        b.load_state_dict(a.state_dict())
        a.weight += delta
    out = weight_distance(a, b)
    assert out["l2"] == pytest.approx(0.5)
    norm_b = math.sqrt(float((b.weight.detach() ** 2).sum() + (b.bias.detach() ** 2).sum()))
    assert out["relative_l2"] == pytest.approx(0.5 / norm_b)
    assert out["n_params"] == 15
    # A state dict with an extra tensor and a differently shaped one: both skipped and counted.
    sd = {**b.state_dict(), "bias": torch.zeros(7), "extra": torch.ones(2), "steps": torch.tensor(3)}
    partial = weight_distance(a, sd)
    assert (partial["n_tensors"], partial["n_params"], partial["n_unmatched"]) == (1, 12, 3)
    assert partial["l2"] == pytest.approx(0.5)


def test_nothing_to_compare_names_the_mismatch():
    with pytest.raises(ErasediffError, match="no parameter name matches"):
        weight_distance({"x": torch.ones(2)}, {"y": torch.ones(2)})
    with pytest.raises(ErasediffError, match=r"'x': \(2,\) vs \(3,\)"):
        weight_distance({"x": torch.ones(2)}, {"x": torch.ones(3)})
    with pytest.raises(ErasediffError, match="all zero"):
        weight_distance({"x": torch.ones(2)}, {"x": torch.zeros(2)})
    with pytest.raises(ErasediffError, match="state dict"):
        weight_distance([torch.ones(2)], {"x": torch.ones(2)})
