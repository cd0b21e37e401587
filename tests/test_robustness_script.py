"""StableDiffusion/scripts/robustness.sh with SMOKE=1 (CPU, offline) on the tiny stand-ins of sd_fixtures: every
SD model of the project (made by nudity.sh / tench.sh), every attack, COCO utility, and the robustness table."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from sd_fixtures import tiny_classifier, tiny_clip, tiny_pipeline, write_image_folder  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "StableDiffusion" / "scripts" / "robustness.sh"
ATTACKS = ("none", "unlearndiffatk", "ringabell", "textual_inversion")
MODELS = {"nudity": ("sd14", "erasediff_u", "esd_u", "salun"), "tench": ("sd14", "erasediff_x", "esd_x")}


def test_robustness_script_smoke(tiny_pipeline, tiny_classifier, tiny_clip, tmp_path, fast_python):
    header = SCRIPT.read_text().splitlines()[1:14]
    assert any("table" in line for line in header)
    assert any("run time" in line for line in header) and any("GPU memory" in line for line in header)
    text = SCRIPT.read_text()
    assert not re.search(r"(attack|method|train)\.[a-z_]+=", text)  # no hyperparameters in the script
    coco = tmp_path / "coco.csv"
    coco.write_text("case_number,prompt,evaluation_seed\n0,a dog on a sofa,1\n1,a red bus,2\n2,a bowl of fruit,3\n")
    real = write_image_folder(tmp_path / "coco_real", {"a": 4}, size=16)
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "rob"), "NUDITY_MODELS": str(tmp_path / "nudity"),
           "TENCH_MODELS": str(tmp_path / "tench"), "PYTHON": fast_python, "SD_PIPELINE": str(tiny_pipeline),
           "CLASSIFIER": str(tiny_classifier), "CLIP_MODEL": str(tiny_clip), "COCO_CSV": str(coco),
           "COCO_REAL": str(real), "EXTRA_SET": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = tmp_path / "rob_smoke"
    for concept, runs in MODELS.items():
        for run in runs:
            for attack in ATTACKS:
                m = json.loads((out / concept / run / "attacks" / attack / "metrics.json").read_text())
                assert m["n_prompts"] == 2 and m["attack"] == attack and 0.0 <= m["asr"] <= 1.0
                assert m["asr"] == pytest.approx(m["pre_asr"] + m["post_asr"])
    for run in MODELS["nudity"]:
        assert "coco_fid" in json.loads((out / "nudity" / run / "coco" / "metrics.json").read_text())
    table = (out / "robustness.md").read_text()
    assert "| EraseDiff-u · nudity |" in table and "| ESD-x · tench |" in table and "(2.1%)" in table
    assert r.stdout.strip().splitlines()[-1].startswith("wrote")
    # a second run reuses every finished stage: only the report is written again
    again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ASR" not in again.stdout.split("###")[0]


def test_robustness_script_smoke_needs_the_stand_ins(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SD_PIPELINE", "CLASSIFIER", "CLIP_MODEL")}
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                       env={**env, "SMOKE": "1", "OUT": str(tmp_path / "out"), "PYTHON": "false"})
    assert r.returncode != 0 and "SD_PIPELINE" in r.stderr and not (tmp_path / "out_smoke").exists()
