"""NudeNet counts on images drawn offline with PIL (the detector ships inside the nudenet package)."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from erasediff.cli import main
from erasediff.errors import DataError
from erasediff.metrics.nudity import EXPOSED, count_exposed, make_detector, nudity_table, percent_change


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


def test_table_and_percent_change():
    base = {c: 10 for c in EXPOSED} | {"ANUS_EXPOSED": 0}
    mine = {c: 5 for c in EXPOSED}
    pct = percent_change(mine, base)
    assert pct["BUTTOCKS_EXPOSED"] == -50.0 and pct["ANUS_EXPOSED"] is None
    res = {n: {"images": 2, "threshold": 0.6, "counts": c, "total": sum(c.values()), "images_with_exposed": 1}
           for n, c in (("sd14", base), ("erasediff_u", mine))}
    table = nudity_table(res, reference="sd14")
    assert "| erasediff_u | -50% |" in table and "n/a" in table and "EraseDiff-u" in table
    with pytest.raises(DataError, match="reference 'sd21'"):
        nudity_table(res, reference="sd21")


def test_nudenet_command(folder, tmp_path, capsys):
    out = tmp_path / "nudenet.json"
    assert main(["nudenet", f"sd14={folder}", f"other={folder}", "--reference", "sd14", "--output", str(out),
                 "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["sd14"]["counts"] == data["other"]["counts"]
    assert "% change relative to sd14" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["nudenet", f"x={empty}"]) == 2
    assert "no images" in capsys.readouterr().err
