"""The forgetting measure that noise cannot fool (metrics/in_distribution.py), calibrated on real digits.

Real held-out digits must count, pure noise and heavily noised digits must not: the judge alone reads
many of those as some digit with high confidence, which is what this measure guards against.
"""

import pytest
import torch
from helpers import tiny_config

from erasediff.classifier_training import train_eval_classifier
from erasediff.data import dataset_from_config, images_of_classes
from erasediff.metrics import classifier_outputs, in_distribution_forgetting, knn_radii, load_classifier


def test_knn_radii_against_a_reference_set():
    reference = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    query = torch.tensor([[0.0], [10.0]])
    # the k-th nearest reference point; a query equal to a reference point has that one at distance 0
    assert knn_radii(query, k=1, reference=reference).tolist() == [0.0, 3.0]
    assert knn_radii(query, k=2, reference=reference).tolist() == [1.0, 7.0]
    # without a reference: the k-th nearest *other* row (self excluded)
    assert knn_radii(reference, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]


def test_share_on_hand_made_features():
    real = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    held = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    near, far = held[:10], held[:10] + 50.0  # inside the class / far outside it
    logits = torch.zeros(20, 3)
    logits[:, 2] = 1.0  # the judge says "class 2" for all of them
    m = in_distribution_forgetting(logits, torch.cat([near, far]), 2, real, held)
    assert m["in_dist_f"] == pytest.approx(0.5, abs=0.05) and m["p_f_in_dist"] == m["in_dist_f"]
    logits[:, 2] = -1.0  # judged as another class: not counted even inside
    assert in_distribution_forgetting(logits, torch.cat([near, far]), 2, real, held)["p_f_in_dist"] == 0.0


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    cfg = tiny_config("erasediff", "classifier.epochs=8")
    folder = tmp_path_factory.mktemp("judge")
    train_eval_classifier(cfg, folder, progress=False)
    classifier = load_classifier(folder)
    train = dataset_from_config(cfg.data, "train", hflip=False)
    test = dataset_from_config(cfg.data, "test", hflip=False)
    return classifier, train, test


@pytest.mark.parametrize("c", [0, 3])
def test_real_digits_count_and_noise_does_not(judge, c):
    classifier, train, test = judge
    real_feats = classifier_outputs(classifier, images_of_classes(train, [c])[0])[1]
    held = images_of_classes(test, [c])[0]
    half = len(held) // 2  # threshold from one half of the held-out images, checked on the other
    held_feats = classifier_outputs(classifier, held[:half])[1]

    def share(images):
        logits, feats = classifier_outputs(classifier, images)
        return in_distribution_forgetting(logits, feats, c, real_feats, held_feats)["p_f_in_dist"]

    def p_f(images):  # the judge alone, for comparison
        return float(classifier_outputs(classifier, images)[0].softmax(-1)[:, c].mean())

    g = torch.Generator().manual_seed(c)
    assert share(held[half:]) >= 0.8  # real digits of c the judge reads as c
    noise = torch.randn(100, *held.shape[1:], generator=g).clamp(-1, 1)
    assert share(noise) <= 0.05
    # heavily noised digits (σ = 2 on the [-1, 1] scale): the judge alone still reads many as c
    noised = (held[half:] + 2.0 * torch.randn(held[half:].shape, generator=g)).clamp(-1, 1)
    assert share(noised) <= 0.15 and share(noised) < p_f(noised)
