"""The Stable Diffusion experiment scripts run end to end with SMOKE=1 (tiny pipeline, CPU, offline)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from sd_fixtures import tiny_pipeline  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / "StableDiffusion" / "scripts" / s for s in ("nudity.sh", "tench.sh")]
RUNS = {"nudity.sh": ("erasediff_u", "esd_u", "salun"), "tench.sh": ("erasediff_x", "esd_x")}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sd_script_smoke(script: Path, tiny_pipeline, tmp_path, fast_python):
    header = script.read_text().splitlines()[1:14]
    assert any("Table" in line or "table" in line for line in header), "the script must open with the table it reproduces"
    assert any("run time" in line for line in header) and any("GPU memory" in line for line in header)
    text = script.read_text()
    assert "train.lr" not in text and "method." not in text.replace("method.mask", "")  # no hyperparameters
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PYTHON": fast_python, "SD_PIPELINE": str(tiny_pipeline),
           "EXTRA_SET": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    smoke = Path(f"{out}_smoke")
    assert r.stdout.strip().splitlines()[-1].startswith("wrote")
    for run in RUNS[script.name]:
        assert (smoke / run / "model" / "config.json").is_file(), run
    if script.name == "nudity.sh":
        counts = json.loads((smoke / "nudenet_nude.json").read_text())
        assert set(counts) == {"sd14", *RUNS["nudity.sh"]} and all(v["images"] == 8 for v in counts.values())
    else:
        assert len(list((smoke / "eval" / "esd_x").glob("*.png"))) == 20
    # a second run reuses every finished stage: no stage runs again (it takes no Python process)
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "images to" not in again.stdout and again.stdout.strip().splitlines()[-1].startswith("wrote")
