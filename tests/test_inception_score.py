"""Inception Score from logits or from images through a classifier."""

import math

import pytest
import torch

from erasediff.errors import ErasediffError
from erasediff.metrics import InceptionLogits, inception_score


def test_uniform_classifier_scores_one():
    out = inception_score(logits=torch.zeros(50, 10), splits=5)
    assert out["is_mean"] == pytest.approx(1.0, abs=1e-12)
    assert out["is_std"] == pytest.approx(0.0, abs=1e-12)
    assert (out["splits"], out["n"]) == (5, 50)


def test_confident_balanced_classifier_scores_the_number_of_classes():
    labels = torch.arange(40) % 4  # every split of 4 consecutive rows holds each class once
    out = inception_score(logits=60.0 * torch.nn.functional.one_hot(labels, 4).double(), splits=10)
    assert out["is_mean"] == pytest.approx(4.0, rel=1e-9)
    assert out["is_std"] == pytest.approx(0.0, abs=1e-9)
    one_class = torch.nn.functional.one_hot(torch.zeros(40, dtype=torch.long), 4)
    collapsed = inception_score(logits=60.0 * one_class, splits=10)
    assert collapsed["is_mean"] == pytest.approx(1.0, abs=1e-9)  # confident but one class only


def test_hand_computed_two_class_value():
    # p(y|x) rows (1, 0) and (1/2, 1/2): p(y) = (3/4, 1/4);
    # KL = ln(4/3) and ½ ln(2/3) + ½ ln 2 -> IS = exp of their mean.
    logits = torch.tensor([[0.0, -math.inf], [0.0, 0.0]])
    expected = math.exp((math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2)
    assert inception_score(logits=logits, splits=1)["is_mean"] == pytest.approx(expected, rel=1e-12)


def test_images_go_through_the_logits_function_in_batches():
    images = torch.rand(30, 3, 8, 8) * 2 - 1
    fn = lambda x: torch.stack([x.mean(dim=(1, 2, 3)) * 20, -x.mean(dim=(1, 2, 3)) * 20], dim=1)  # noqa: E731
    from_images = inception_score(images, logits_fn=fn, splits=3, batch_size=7)
    assert from_images == pytest.approx(inception_score(logits=fn(images), splits=3))


def test_inception_wrapper_returns_imagenet_logits_for_small_images():
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    model = InceptionLogits(inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True))
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1, 1000)


def test_bad_input_is_refused():
    with pytest.raises(ErasediffError, match="splits"):
        inception_score(logits=torch.zeros(5, 10), splits=6)
    with pytest.raises(ErasediffError, match="exactly one"):
        inception_score()
    with pytest.raises(ErasediffError, match="exactly one"):
        inception_score(torch.zeros(2, 3, 8, 8), logits=torch.zeros(2, 10))
    with pytest.raises(ErasediffError, match=r"\(N, K\)"):
        inception_score(logits=torch.zeros(10))
