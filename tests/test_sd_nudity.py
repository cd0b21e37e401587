"""NudeNet counts on images drawn offline with PIL (the detector ships inside the nudenet package), the
`nudenet` group of `evaluate` on the tiny pipeline's images, and `report --layout nudity`."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sd_fixtures import tiny_pipeline  # noqa: F401  (pytest fixture)

from erasediff.cli import main
from erasediff.errors import DataError
from erasediff.metrics.nudity import EXPOSED, SHORT, count_exposed, make_detector
from erasediff.report import render

SMOKE = Path(__file__).resolve().parents[1] / "StableDiffusion" / "configs" / "smoke"


@pytest.fixture(scope="module")
def detector():
    return make_detector()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six 256 px images: skin-toned figures with shapes, flat colours and noise (real PNG files)."""
    out = tmp_path_factory.mktemp("nude")
    rng = np.random.default_rng(0)
    for i in range(6):
        img = Image.new("RGB", (256, 256), (200, 180, 160) if i % 2 else (30, 60, 90))
        d = ImageDraw.Draw(img)
        d.ellipse((70, 20, 186, 120), fill=(224, 172, 140))  # head
        d.rectangle((60, 110, 196, 250), fill=(230, 180, 150))  # torso
        d.ellipse((80, 140, 120, 180), fill=(190, 120, 100))
        d.ellipse((136, 140, 176, 180), fill=(190, 120, 100))
        if i >= 4:
            img = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        img.save(out / f"{i}_0.png")
    (out / "manifest.csv").write_text("path,prompt\n")  # non-images are ignored
    return out


def test_counts_are_integers_and_monotone_in_threshold(detector, folder):
    low = count_exposed(folder, threshold=0.2, detector=detector)
    default = count_exposed(folder, detector=detector)
    none = count_exposed(folder, threshold=1.0, detector=detector)
    assert low["images"] == default["images"] == 6 and default["threshold"] == 0.6
    for r in (low, default, none):
        assert set(r["counts"]) == set(EXPOSED) and len(EXPOSED) == 9
        assert all(isinstance(v, int) and v >= 0 for v in r["counts"].values())
        assert r["total"] == sum(r["counts"].values()) and 0 <= r["images_with_exposed"] <= r["images"]
    for c in EXPOSED:
        assert low["counts"][c] >= default["counts"][c] >= none["counts"][c] == 0


def test_count_exposed_bad_input(detector, tmp_path):
    with pytest.raises(DataError, match="no images"):
        count_exposed(tmp_path, detector=detector)
    with pytest.raises(DataError, match="does not exist"):
        count_exposed(tmp_path / "missing", detector=detector)


def _nudenet_run(root, run, counts):
    (root / run / "eval").mkdir(parents=True)
    metrics = {"nudenet_images": 2, "nudenet_threshold": 0.6, "nudenet_counts": counts,
               "nudenet_total": sum(counts.values()), "nudenet_images_with_exposed": 1, "prompts": "p.csv"}
    (root / run / "eval" / "metrics.json").write_text(json.dumps(metrics))


def test_nudity_report_with_the_paper_and_the_percent_change(tmp_path):
    _nudenet_run(tmp_path, "sd14", {c: 10 for c in EXPOSED} | {"ANUS_EXPOSED": 0})
    _nudenet_run(tmp_path, "erasediff_u", {c: 5 for c in EXPOSED})
    text = render("nudity", tmp_path)
    table, change = text.split("\n% change relative to SD v1.4\n")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["SD v1.4"].startswith("| SD v1.4 | 2 | 10 (92) | 10 (1496) |") and "| 0 (0) | 80 | 1 |" in rows["SD v1.4"]
    assert rows["SD v2.1"].startswith("| SD v2.1 | – | – (79) |") and "ESD-u" in rows and "SalUn" not in rows
    assert "| EraseDiff-u | -50% | -50% | -50% | -50% | -50% | -50% | -50% | -50% | n/a | -44% |" in change
    assert "NudeNet threshold: 0.6" in table and [SHORT[c] for c in EXPOSED][-1] == "Anus"


def test_evaluate_counts_nudenet_on_the_generated_images(tiny_pipeline, tmp_path, capsys):
    out = tmp_path / "sd14" / "eval"
    args = ["evaluate", "--config", str(SMOKE / "erasediff_u.yaml"), "--set", f"model.pretrained={tiny_pipeline}",
            "--set", "generate.max_per_prompt=1", "--model", str(tiny_pipeline), "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["nudenet_images"] == m["n_generated"] == 4 and m["nudenet_threshold"] == 0.6
    assert set(m["nudenet_counts"]) == set(EXPOSED) and m["nudenet_total"] == sum(m["nudenet_counts"].values())
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["0_0.png", "1_0.png", "2_0.png", "3_0.png"]
    assert "nudenet_total" in capsys.readouterr().out
    assert main(args) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
