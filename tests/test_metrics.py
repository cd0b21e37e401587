"""Metrics: forget-class scores from logits, the Fréchet distance, and the digits evaluation classifier."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from erasediff.errors import ErasediffError
from erasediff.metrics import (
    DigitsCNN,
    accuracy_metrics,
    classifier_outputs,
    extract_features,
    feature_statistics,
    forgetting_metrics,
    frechet_distance,
    load_classifier,
    save_classifier,
    train_classifier,
)
from erasediff.metrics.classifier import _random_shift

# --- forgetting / accuracy metrics -------------------------------------------------------------


def test_uniform_output_has_max_entropy_and_chance_probability():
    m = forgetting_metrics(torch.zeros(7, 10), forget_class=3)
    assert m["entropy_f"] == pytest.approx(math.log(10), abs=1e-9)
    assert m["p_f"] == pytest.approx(0.1, abs=1e-9)
    assert m["n"] == 7


def test_confident_outputs_for_and_against_the_forget_class():
    on_target = forgetting_metrics(50.0 * F.one_hot(torch.full((5,), 2), 10).float(), forget_class=2)
    assert on_target["p_f"] == pytest.approx(1.0, abs=1e-6)
    assert on_target["entropy_f"] == pytest.approx(0.0, abs=1e-6)
    assert on_target["acc_f"] == 1.0
    elsewhere = forgetting_metrics(50.0 * F.one_hot(torch.full((5,), 7), 10).float(), forget_class=2)
    assert elsewhere["p_f"] == pytest.approx(0.0, abs=1e-6)
    assert elsewhere["acc_f"] == 0.0


def test_forgetting_metrics_on_known_probabilities():
    # Row 1: probabilities (1/2, 1/4, 1/4) -> entropy 1.5 ln 2; row 2: (1/4, 1/2, 1/4), same entropy.
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    m = forgetting_metrics(probs.log() + 3.0, forget_class=0)  # logits are defined up to a constant
    assert m["p_f"] == pytest.approx(0.375)
    assert m["entropy_f"] == pytest.approx(1.5 * math.log(2))
    assert m["acc_f"] == 0.5
    assert json.loads(json.dumps(m)) == m


def test_forgetting_metrics_bad_input():
    with pytest.raises(ErasediffError, match="out of range"):
        forgetting_metrics(torch.zeros(3, 10), forget_class=10)
    with pytest.raises(ErasediffError, match="non-empty"):
        forgetting_metrics(torch.zeros(0, 10), forget_class=0)


def test_accuracy_metrics_per_class_on_hand_made_example():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    m = accuracy_metrics(F.one_hot(preds, 4).float(), labels)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["per_class"] == pytest.approx({"0": 0.5, "1": 2 / 3, "2": 1.0})
    assert m["n"] == 6
    with pytest.raises(ErasediffError):
        accuracy_metrics(torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64))


# --- Fréchet distance ---------------------------------------------------------------------------


def _exact_gaussian_sample(rng, n, mean, std):
    """n rows whose sample mean is exactly `mean` and unbiased sample covariance exactly diag(std²)."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(z.T @ z / (n - 1))
    white = np.linalg.solve(chol, z.T).T  # sample covariance now the identity
    return np.asarray(mean) + white * np.asarray(std)


def test_frechet_distance_of_identical_sets_is_zero():
    x = np.random.default_rng(0).standard_normal((500, 16)) * 3.0
    assert abs(frechet_distance(x, x)) < 1e-6 * np.trace(np.cov(x, rowvar=False))
    assert abs(frechet_distance(torch.from_numpy(x).float(), torch.from_numpy(x).float())) < 1e-3


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, s1 = [0.0, 1.0, -2.0, 0.5], [1.0, 2.0, 0.5, 1.5]
    mu2, s2 = [1.0, 1.0, 0.0, 0.5], [3.0, 1.0, 0.5, 0.2]
    a = _exact_gaussian_sample(rng, 300, mu1, s1)
    b = _exact_gaussian_sample(rng, 400, mu2, s2)
    # Diagonal covariances commute: Tr(Σ1 + Σ2 - 2(Σ1Σ2)^½) = Σ_i (s1_i - s2_i)².
    expected = sum((m1 - m2) ** 2 for m1, m2 in zip(mu1, mu2)) + sum((x - y) ** 2 for x, y in zip(s1, s2))
    assert expected == pytest.approx((1 + 4) + (4 + 1 + 1.3 ** 2))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_grows_with_added_noise():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 8)) @ rng.standard_normal((8, 8))
    noise = rng.standard_normal(x.shape)
    distances = [frechet_distance(x, x + s * noise) for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert distances[0] < 1e-6
    assert all(lo < hi for lo, hi in zip(distances, distances[1:])), distances


def test_constant_dimensions_add_only_their_mean_gap(recwarn):
    # Dead feature units (constant columns) must not change d² or make sqrtm warn; a constant that
    # differs between the sets adds its squared gap.
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((300, 5)), rng.standard_normal((200, 5)) + 0.5
    base = frechet_distance(a, b)
    zeros_a, zeros_b = np.zeros((300, 3)), np.zeros((200, 3))
    assert frechet_distance(np.hstack([a, zeros_a]), np.hstack([b, zeros_b])) == pytest.approx(base, rel=1e-9)
    assert not [w for w in recwarn if "singular" in str(w.message)]
    assert frechet_distance(np.hstack([a, zeros_a]), np.hstack([b, zeros_b + 2.0])) == pytest.approx(base + 12.0, rel=1e-6)


def test_feature_statistics_values_and_bad_input():
    mu, sigma = feature_statistics(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
    assert mu.dtype == np.float64 and sigma.shape == (2, 2)
    np.testing.assert_allclose(mu, [1.0, 3.0])
    np.testing.assert_allclose(sigma, [[2.0, 4.0], [4.0, 8.0]])  # unbiased: divide by N - 1 = 1
    with pytest.raises(ErasediffError, match="at least 2"):
        feature_statistics(np.ones((1, 4)))
    with pytest.raises(ErasediffError, match="2-D"):
        feature_statistics(np.ones(4))
    with pytest.raises(ErasediffError, match="at least 2"):
        frechet_distance(np.ones((0, 4)), np.ones((3, 4)))
    with pytest.raises(ErasediffError, match="dimensions differ"):
        frechet_distance(np.ones((3, 4)), np.ones((3, 5)))


def test_extract_features_batches_and_flattens():
    images = torch.randn(10, 1, 4, 4)
    feats = extract_features(lambda x: x[:, :, :2, :2] * 2.0, images, batch_size=3)
    assert isinstance(feats, np.ndarray) and feats.shape == (10, 4)
    np.testing.assert_allclose(feats, (images[:, :, :2, :2] * 2.0).reshape(10, 4).numpy(), rtol=1e-6)
    with pytest.raises(ErasediffError):
        extract_features(lambda x: x, torch.zeros(0, 1, 4, 4))


# --- the digits classifier ----------------------------------------------------------------------


def _digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0.0, 1.0) * 2.0 - 1.0
    y = torch.from_numpy(digits.target).long()
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=digits.target, random_state=0)
    return x[train], y[train], x[test], y[test]


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = _digits_split()
    model = train_classifier(x_train, y_train, epochs=20, seed=0, progress=False)
    return model, x_test, y_test, x_train


def test_classifier_reaches_95_percent_on_digits_test_split(trained):
    model, x_test, y_test, _ = trained
    assert not model.training
    logits, feats = classifier_outputs(model, x_test, batch_size=100)
    assert logits.shape == (len(x_test), 10) and feats.shape == (len(x_test), 128)
    m = accuracy_metrics(logits, y_test)
    assert m["acc"] >= 0.95, m
    assert min(m["per_class"].values()) >= 0.8, m["per_class"]
    np.testing.assert_allclose(extract_features(model.features, x_test, batch_size=64), feats.double().numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # units dead for one half of the classes only
def test_classifier_features_separate_classes_in_frechet_distance(trained):
    # Real test images sit much closer to real train images than digits 0-4 to digits 5-9.
    model, x_test, y_test, x_train = trained
    _, test_feats = classifier_outputs(model, x_test)
    _, train_feats = classifier_outputs(model, x_train)
    same = frechet_distance(test_feats, train_feats)
    different = frechet_distance(test_feats[y_test < 5], test_feats[y_test >= 5])
    assert 0 < same < 0.2 * different, (same, different)


def test_save_load_round_trip(trained, tmp_path):
    model, x_test, _, _ = trained
    save_classifier(model, tmp_path / "clf", extra={"test_acc": 0.97})
    info = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert info["test_acc"] == 0.97 and info["num_classes"] == 10 and info["image_size"] == 16
    loaded = load_classifier(tmp_path / "clf")
    assert isinstance(loaded, DigitsCNN) and not loaded.training
    with torch.inference_mode():
        assert torch.equal(loaded(x_test), model(x_test))


def test_load_missing_classifier_names_the_path(tmp_path):
    with pytest.raises(ErasediffError, match="nope"):
        load_classifier(tmp_path / "nope")


def test_training_is_seeded_and_leaves_global_rng_alone():
    x = torch.rand(40, 1, 16, 16) * 2 - 1
    y = torch.arange(40) % 10
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = train_classifier(x, y, epochs=1, batch_size=16, seed=5, progress=False)
    assert torch.equal(torch.rand(3), expected_next)
    b = train_classifier(x, y, epochs=1, batch_size=16, seed=5, progress=False)
    c = train_classifier(x, y, epochs=1, batch_size=16, seed=6, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_train_classifier_rejects_bad_shapes():
    with pytest.raises(ErasediffError, match="expected"):
        train_classifier(torch.zeros(4, 3, 16, 16), torch.zeros(4, dtype=torch.int64), progress=False)
    with pytest.raises(ErasediffError, match="labels"):
        train_classifier(torch.zeros(4, 1, 16, 16), torch.zeros(3, dtype=torch.int64), progress=False)


def test_random_shift_moves_content_by_at_most_one_pixel():
    x = torch.full((64, 1, 16, 16), -1.0)
    x[:, 0, 7, 9] = 1.0
    out = _random_shift(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal((out == 1.0).sum(dim=(1, 2, 3)), torch.ones(64, dtype=torch.int64))
    rows, cols = (out[:, 0] == 1.0).nonzero()[:, 1:].T
    assert (rows - 7).abs().max() <= 1 and (cols - 9).abs().max() <= 1
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 1  # not a constant offset
