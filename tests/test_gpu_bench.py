"""scripts/gpu_bench.sh end to end with SMOKE=1 (tiny configs on CPU): every part runs and is reported."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow  # about 5 minutes on 2 cores: a dozen commands, each bench config in its own process


def test_gpu_bench_smoke(tmp_path, fast_python):
    script = REPO / "scripts" / "gpu_bench.sh"
    header = script.read_text().splitlines()[1:12]
    assert any("Table 2" in line for line in header)
    assert any("run time" in line for line in header) and any("GPU memory" in line for line in header)
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "PYTHON": fast_python, "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=1500, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = Path(f"{tmp_path / 'out'}_smoke")
    assert r.stdout.strip().splitlines()[-1] == f"wrote {out}/bench.md and {out}/bench.json"
    parts = json.loads((out / "bench.json").read_text())
    methods = ["finetune", "erasediff", "neggrad", "blindspot", "selective_amnesia", "salun"]
    for precision in ("no", "bf16"):
        rows = parts[f"cifar_{precision}"]["rows"]
        assert [r["method"] for r in rows] == methods
        assert all(r["sec_per_step"] > 0 and r["fwd_bwd_per_step"] >= 1 for r in rows)
        assert parts[f"cifar_{precision}"]["overrides"].count(f"train.mixed_precision={precision}") == 1
    assert [Path(r["config"]).stem for r in parts["sd_bf16"]["rows"]] == ["erasediff_u", "erasediff_x", "esd_u", "esd_x",
                                                                          "salun"]
    sd = {Path(r["config"]).stem: r for r in parts["sd_bf16"]["rows"]}
    assert sd["erasediff_x"]["trainable_params"] < sd["erasediff_u"]["trainable_params"]  # cross-attention only
    sampling = parts["cifar_sampling"]["rows"]
    assert [(r["mixed_precision"], r["compile"]) for r in sampling] == [("no", False), ("bf16", False), ("bf16", True)]
    assert all(r["images_per_s"] > 0 for r in sampling + parts["sd_sampling"]["rows"])
    report = (out / "bench.md").read_text()
    assert report.count("## ") == 5 and "× floor" in report and "images/s" in report
