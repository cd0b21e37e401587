"""FID on features and cached reference statistics; per-class FID; the Inception wrapper."""

import urllib.error

import numpy as np
import pytest
import torch

from erasediff.errors import ErasediffError
from erasediff.metrics import (
    InceptionFeatures,
    drop_shared_constants,
    extract_features,
    feature_statistics,
    fid_from_statistics,
    frechet_distance,
    inception_extractor,
    per_class_fid,
    reference_key,
    reference_statistics,
    reference_statistics_path,
)


def _extractor():
    """A fixed random conv net: (B, 3, H, W) -> (B, 12); tanh keeps every unit alive (no constant dims)."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, stride=2), torch.nn.Tanh(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net.eval()


def _images(n, seed=0, size=8):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _fid(a, b, ext):
    return frechet_distance(extract_features(ext, a), extract_features(ext, b))


def test_fid_of_identical_sets_is_zero_and_grows_with_noise():
    ext, x = _extractor(), _images(300)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert _fid(x, x, ext) == pytest.approx(0.0, abs=1e-8)
    fids = [_fid(x, x + s * noise, ext) for s in (0.05, 0.2, 0.5, 1.0)]
    assert all(lo < hi for lo, hi in zip(fids, fids[1:])), fids
    assert fids[0] > 0


def test_the_statistics_route_equals_the_feature_route():
    ext, a, b = _extractor(), _images(200, 0), _images(150, 1) * 0.7
    whole = _fid(a, b, ext)
    feats = lambda x: ext(x).detach().double().numpy()  # noqa: E731
    from_stats = fid_from_statistics(*feature_statistics(feats(a)), *feature_statistics(feats(b)))
    assert from_stats == pytest.approx(whole, rel=1e-6)
    with pytest.raises(ErasediffError, match="covariances"):
        fid_from_statistics(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_dimensions_constant_in_both_sets_are_dropped_from_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.5
    a_pad, b_pad = (np.concatenate([x, np.full((len(x), 2), 7.0)], axis=1) for x in (a, b))  # 2 dead dims at 7.0
    mu_a, s_a, mu_b, s_b = drop_shared_constants(*feature_statistics(a_pad), *feature_statistics(b_pad))
    assert mu_a.shape == (3,) and s_b.shape == (3, 3)
    assert fid_from_statistics(mu_a, s_a, mu_b, s_b) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    b_pad[:, 4] = 8.0  # constant in both, at different values: it adds (7 - 8)^2 and stays
    kept = drop_shared_constants(*feature_statistics(a_pad), *feature_statistics(b_pad))
    assert kept[0].shape == (4,) and fid_from_statistics(*kept) == pytest.approx(frechet_distance(a, b) + 1.0, rel=1e-6)


def test_reference_statistics_are_cached_per_set_and_extractor(tmp_path):
    calls = []

    def images_fn():
        calls.append(1)
        return _images(80, 3)

    ext, key = _extractor(), reference_key("cifar10", "train", [9, 1, 2])
    assert key == "cifar10/train/classes=1,2,9"
    mu, sigma = reference_statistics(key, images_fn, ext, "rand-conv-12", tmp_path)
    mu2, sigma2 = reference_statistics(key, images_fn, ext, "rand-conv-12", tmp_path)
    assert len(calls) == 1  # the second call read the cache
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert mu.shape == (12,) and sigma.shape == (12, 12)
    with np.load(reference_statistics_path(key, "rand-conv-12", tmp_path)) as z:
        assert int(z["n"]) == 80 and str(z["key"]) == key and str(z["extractor_id"]) == "rand-conv-12"
    # The cached statistics give the same FID as the images they came from.
    gen = _images(90, 4) * 0.8
    gen_stats = feature_statistics(ext(gen).detach().double().numpy())
    direct = _fid(gen, _images(80, 3), ext)
    assert fid_from_statistics(*gen_stats, mu, sigma) == pytest.approx(direct, rel=1e-6)
    # Another extractor id is another cache entry, computed afresh.
    reference_statistics(key, images_fn, ext, "other-net", tmp_path)
    assert len(calls) == 2


def test_reference_statistics_refuse_a_cache_file_of_another_key(tmp_path):
    ext = _extractor()
    reference_statistics("set-a", lambda: _images(20), ext, "net", tmp_path)
    wrong = reference_statistics_path("set-b", "net", tmp_path)
    reference_statistics_path("set-a", "net", tmp_path).rename(wrong)
    with pytest.raises(ErasediffError, match=wrong.name):
        reference_statistics("set-b", lambda: _images(20), ext, "net", tmp_path)


def test_per_class_fid_layout_and_values():
    ext = _extractor()
    real = torch.cat([_images(60, 10), _images(60, 11) * 0.5])
    real_labels = torch.tensor([2] * 60 + [8] * 60)
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(5))
    gen = real + torch.cat([torch.zeros(60, 1, 1, 1), torch.ones(60, 1, 1, 1)]) * noise  # class 2 exact, 8 noisy
    out = per_class_fid(gen, real_labels, real, real_labels, [2, 8], ext)
    assert set(out) == {"fid_class_2", "fid_class_8"}
    assert out["fid_class_2"] == pytest.approx(0.0, abs=1e-8)
    assert out["fid_class_8"] > 0.01
    stats = {c: feature_statistics(ext(real[real_labels == c]).detach().double().numpy()) for c in (2, 8)}
    cached = per_class_fid(gen, real_labels, None, None, [2, 8], ext, real_statistics=stats)
    assert cached["fid_class_8"] == pytest.approx(out["fid_class_8"], rel=1e-6)
    with pytest.raises(ErasediffError, match="class 5"):
        per_class_fid(gen, real_labels, real, real_labels, [5], ext)


@pytest.fixture
def offline_fid_inception(monkeypatch):
    """pytorch-fid's InceptionV3 with its FID network structure randomly initialised (no download)."""
    import pytorch_fid.inception as pi

    def random_fid_inception():
        torch.manual_seed(0)
        return pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)

    monkeypatch.setattr(pi, "fid_inception_v3", random_fid_inception)


def test_inception_extractor_feeds_pytorch_fid_its_zero_one_range(offline_fid_inception):
    from pytorch_fid.inception import InceptionV3

    ext = inception_extractor(dims=64)
    assert isinstance(ext, InceptionFeatures) and ext.extractor_id.endswith("64")
    x = _images(2, size=32)
    feats = ext(x)
    assert feats.shape == (2, 64)
    # Same network fed the [0, 1] images directly, as pytorch-fid's own pipeline does, then spatially averaged.
    reference = InceptionV3([0])
    reference.load_state_dict(ext.net.state_dict())
    expected = reference.eval()((x + 1) / 2)[0].mean(dim=(2, 3))
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    assert ext(x[:, :1]).shape == (2, 64)  # grey images are repeated to RGB


def test_inception_extractor_errors(monkeypatch):
    import pytorch_fid.inception as pi

    with pytest.raises(ErasediffError, match="valid sizes are 64, 192, 768, 2048"):
        inception_extractor(dims=100)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(pi, "load_state_dict_from_url", offline)
    with pytest.raises(ErasediffError, match="pt_inception"):
        inception_extractor(dims=2048)
