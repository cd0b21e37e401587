"""`evaluate`: every metric group on digits with the classifier's features (offline), the real-statistics
cache, the quirk options and weight distance, and several models in one call."""

import json

import pytest
import torch
from helpers import SMOKE, TINY, tiny_config

from erasediff.build import build_run
from erasediff.classifier_training import train_eval_classifier
from erasediff.cli import main
from erasediff.errors import ConfigError
from erasediff.evaluate import evaluate

ALL = ("evaluate.metrics=[classifier, per_class_fd, robust_forgetting, fid, per_class_fid, precision_recall, "
       "inception_score, weight_distance]")
COMMON = ["evaluate.n_per_class=12", "sample.steps=2", "evaluate.fid_features=classifier"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    models = []
    for seed in (0, 1):
        run = build_run(tiny_config("pretrain", f"seed={seed}"))
        run.state.model.save_pretrained(root / f"model{seed}")
        models.append(root / f"model{seed}")
    train_eval_classifier(tiny_config("erasediff"), root / "clf", progress=False)
    return root, models


def test_every_metric_group_on_digits(setup, tmp_path):
    root, (m0, m1) = setup
    cfg = tiny_config("erasediff", ALL, *COMMON, f"evaluate.fid_cache={tmp_path / 'stats'}")
    metrics, images, labels = evaluate(cfg, str(m0), classifier_dir=str(root / "clf"), progress=False,
                                       reference=str(m1), samples_dir=tmp_path / "samples")
    assert images.shape == (120, 1, 16, 16) and labels.tolist() == [c for c in range(10) for _ in range(12)]
    # the pooled FID (cached statistics) and fd_remain (direct) are two routes to the same distance
    assert metrics["fid"] == pytest.approx(metrics["fd_remain"], rel=1e-3)
    for c in range(10):
        assert metrics[f"fid_class_{c}"] == pytest.approx(metrics[f"fd_class_{c}"], rel=1e-3)
    # robust_forgetting's fd_f is the forgotten class's own Fréchet distance; its share never exceeds acc_f
    forget = tiny_config("erasediff").data.forget_classes[0]
    assert metrics["fd_f"] == pytest.approx(metrics[f"fd_class_{forget}"], rel=1e-6)
    assert metrics["p_f_in_dist"] <= min(metrics["acc_f"], metrics["in_dist_f"])
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert 1 <= metrics["is_mean"] <= 10  # classifier logits: IS between 1 and the number of classes
    assert metrics["l2"] > 0 and 0 < metrics["relative_l2"]
    cached = sorted((tmp_path / "stats").glob("*.npz"))
    assert len(cached) == 11  # remaining classes pooled + one file per class
    stamps = [p.stat().st_mtime_ns for p in cached]
    again, _, _ = evaluate(cfg, str(m0), classifier_dir=str(root / "clf"), progress=False, reference=str(m0),
                           samples_dir=tmp_path / "samples")
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # statistics reused, not recomputed
    assert again["fid"] == pytest.approx(metrics["fid"]) and again["l2"] == 0.0  # same folder; WD to itself


def test_quirks_change_what_they_should(setup, tmp_path):
    root, (m0, _) = setup
    base = ["evaluate.metrics=[precision_recall, fid]", *COMMON, f"evaluate.fid_cache={tmp_path / 'stats'}"]
    plain, _, _ = evaluate(tiny_config("erasediff", *base), str(m0), classifier_dir=str(root / "clf"), progress=False)
    swapped, _, _ = evaluate(tiny_config("erasediff", *base, "evaluate.quirks=[swap_precision_recall]"), str(m0),
                             classifier_dir=str(root / "clf"), progress=False)
    assert (swapped["precision"], swapped["recall"]) == (plain["recall"], plain["precision"])
    assert swapped["fid"] == pytest.approx(plain["fid"])
    stretched, _, _ = evaluate(tiny_config("erasediff", *base, "evaluate.quirks=[minmax_stretch]"), str(m0),
                               classifier_dir=str(root / "clf"), progress=False)
    assert stretched["fid"] != pytest.approx(plain["fid"])  # stretched real and generated images score differently
    assert len(list((tmp_path / "stats").glob("*quirks=minmax_stretch*.npz"))) == 1  # its own cache entry


def test_weight_distance_needs_a_reference(setup):
    root, (m0, _) = setup
    with pytest.raises(ConfigError, match="--reference"):
        evaluate(tiny_config("erasediff", "evaluate.metrics=[weight_distance]"), str(m0), progress=False)


def test_cli_evaluates_several_models_in_one_call(setup, tmp_path, capsys):
    root, models = setup
    runs = []
    for k, m in enumerate(models):
        runs.append(tmp_path / f"run{k}")
        runs[-1].mkdir()
        (runs[-1] / "model").symlink_to(m)
        (runs[-1] / "COMPLETE").write_text("{}")  # a finished run (see erasediff.rundir)
    args = ["evaluate", "--config", str(SMOKE / "erasediff.yaml"), "--classifier", str(root / "clf"), "--no-progress",
            "--model", *map(str, runs)]
    for item in (*TINY, *COMMON):
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == 2
    first = json.loads((runs[0] / "eval" / "metrics.json").read_text())
    assert first["model"] == str(runs[0]) and (runs[0] / "eval" / "samples" / "manifest.csv").is_file()
    # never overwritten: a second call refuses before evaluating anything
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_inception_features_are_built_once_per_process(setup, tmp_path, monkeypatch):
    """fid_features: inception goes through metrics.inception_extractor (here a small stand-in: the real
    weights are not available offline) and reuses it for every model of the process."""
    import erasediff.evaluate as ev

    built = []

    class StandIn(torch.nn.Module):
        extractor_id = "stand-in-inception"

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(256, 8)

        def forward(self, x):
            return self.proj(x.flatten(1))

    def fake_extractor(dims, device):
        built.append(dims)
        return StandIn()

    monkeypatch.setattr(ev, "inception_extractor", fake_extractor)
    monkeypatch.setattr(ev, "_INCEPTION", {})
    root, (m0, m1) = setup
    cfg = tiny_config("erasediff", "evaluate.metrics=[fid]", "evaluate.n_per_class=4", "sample.steps=2",
                      "evaluate.fid_features=inception64", f"evaluate.fid_cache={tmp_path}")
    for model in (m0, m1):
        metrics, _, _ = evaluate(cfg, str(model), progress=False)
        assert metrics["fid_features"] == "stand-in-inception" and metrics["fid"] > 0
    assert built == [64]
    assert len(list(tmp_path.glob("*stand-in-inception*.npz"))) == 1
