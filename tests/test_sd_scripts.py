"""The Stable Diffusion experiment scripts run end to end with SMOKE=1 (CPU, offline) on the tiny stand-in
networks of sd_fixtures, which the test makes and hands to the script (SD_PIPELINE, CLASSIFIER, CLIP_MODEL)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from sd_fixtures import tiny_classifier, tiny_clip, tiny_pipeline  # noqa: F401  (pytest fixtures)

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / "StableDiffusion" / "scripts" / s for s in ("nudity.sh", "tench.sh")]
RUNS = {"nudity.sh": ("erasediff_u", "esd_u", "salun"), "tench.sh": ("erasediff_x", "esd_x")}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sd_script_smoke(script: Path, tiny_pipeline, tiny_classifier, tiny_clip, tmp_path, fast_python):
    header = script.read_text().splitlines()[1:14]
    assert any("Table" in line or "table" in line for line in header), "the script must open with the table it reproduces"
    assert any("run time" in line for line in header) and any("GPU memory" in line for line in header)
    text = script.read_text()
    assert "train.lr" not in text and "method." not in text.replace("method.mask", "")  # no hyperparameters
    assert not any("tests/" in line for line in text.splitlines() if not line.startswith("#"))  # nothing of the tests
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PYTHON": fast_python, "SD_PIPELINE": str(tiny_pipeline),
           "CLASSIFIER": str(tiny_classifier), "CLIP_MODEL": str(tiny_clip), "EXTRA_SET": "", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    smoke = Path(f"{out}_smoke")
    assert r.stdout.strip().splitlines()[-1].startswith("wrote")
    for run in RUNS[script.name]:
        assert (smoke / run / "model" / "config.json").is_file(), run
    evals = {run: json.loads((smoke / run / "eval" / "metrics.json").read_text()) for run in ("sd14", *RUNS[script.name])}
    if script.name == "nudity.sh":
        assert all(m["nudenet_images"] == 8 and len(m["nudenet_counts"]) == 9 for m in evals.values())
        assert "% change relative to SD v1.4" in (smoke / "nudity.md").read_text()
    else:
        assert len(list((smoke / "esd_x" / "eval" / "samples").glob("*.png"))) == 20
        assert all(m["forget"] == "tench" and m["fid_n_generated"] == 18 and m["clip_n"] == 20 for m in evals.values())
        assert "| tench acc | 0.00 (0.74) |" in (smoke / "table4.md").read_text()
    # a second run reuses every finished stage: nothing is generated, trained or evaluated again (only `report`)
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "images to" not in again.stdout and "wrote" not in again.stdout.split("###")[0]
    assert again.stdout.strip().splitlines()[-1].startswith("wrote")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sd_script_smoke_needs_the_stand_ins(script: Path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SD_PIPELINE", "CLASSIFIER", "CLIP_MODEL")}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                       env={**env, "SMOKE": "1", "OUT": str(tmp_path / "out"), "PYTHON": "false"})
    assert r.returncode != 0 and "SD_PIPELINE" in r.stderr and not (tmp_path / "out_smoke").exists()
