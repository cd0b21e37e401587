"""`report`: paper layouts filled from eval/metrics.json, cells next to the paper's numbers."""

import json

import pytest

from erasediff.cli import main
from erasediff.errors import ErasediffError
from erasediff.report import LAYOUTS, render, write_report


def write_run(root, run, eval_metrics, train=None):
    (root / run / "eval").mkdir(parents=True)
    (root / run / "eval" / "metrics.json").write_text(json.dumps(eval_metrics))
    if train is not None:
        (root / run / "metrics.json").write_text(json.dumps(train))


def test_table1_cells_sit_next_to_the_paper_numbers(tmp_path):
    write_run(tmp_path, "base", {"fid": 9.5, "precision": 0.4, "recall": 0.8, "entropy_f": 0.04, "p_f": 0.97})
    write_run(tmp_path, "erasediff", {"fid": 8.123, "precision": 0.42, "recall": 0.75, "entropy_f": 2.0, "p_f": 0.2})
    text = render("table1", tmp_path)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 9.50 (9.69) | 0.400 (0.392) | 0.800 (0.787) | 0.040 (0.037) | 0.970 (0.972) |" in lines["Unscrubbed"]
    assert "8.12 (7.97)" in lines["EraseDiff"]
    # a paper row without our run shows "–" next to the paper's number; runs without paper rows are left out
    assert "– (9.08)" in lines["SA"] and "BlindSpot" not in lines


def test_digits_table3_reads_per_class_distances_and_train_time(tmp_path):
    ev = {"fd_class_2": 150.0, "fd_class_8": 120.0, "p_f": 0.01, "acc_f": 0.0, "acc_remain": 0.95, "fd_remain": 30.0,
          "relative_l2": 0.5, **{f"fd_class_{c}": 10.0 + c for c in range(10) if c not in (2, 8)}}
    write_run(tmp_path, "erasediff", ev, train={"wall_time_s": 151.4})
    row = next(line for line in render("digits_table3", tmp_path).splitlines() if line.startswith("| EraseDiff"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = ["method"] + [c.header for c in LAYOUTS["digits_table3"].columns]
    assert len(cells) == len(header)
    got = dict(zip(header, cells))
    assert (got["FD 2"], got["FD c9"], got["WD"], got["train s"], got["p_f"]) == ("150.0", "19.00", "0.500", "151", "0.010")


def test_report_bad_input(tmp_path, capsys):
    with pytest.raises(ErasediffError, match="unknown report layout 'table9'; valid layouts: table1"):
        render("table9", tmp_path)
    with pytest.raises(ErasediffError, match="no evaluated run under"):
        render("table3", tmp_path)
    assert main(["report", "--layout", "table3", "--results", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_writes_the_table(tmp_path, capsys):
    write_run(tmp_path, "retrain", {"fid_class_2": 150.0, "acc_f": 0.01, "relative_l2": 0.0})
    assert main(["report", "--layout", "table3", "--results", str(tmp_path)]) == 0
    out = (tmp_path / "table3.md").read_text()
    assert "150.00 (152.39)" in out and out in capsys.readouterr().out


def test_grid_puts_one_panel_per_evaluated_method_side_by_side(tmp_path):
    import numpy as np
    from PIL import Image

    from erasediff.sample_folders import image_path, save_png, write_manifest

    for k, run in enumerate(("base", "erasediff")):
        write_run(tmp_path, run, {"p_f": 0.5})
        folder = tmp_path / run / "eval" / "samples"
        for c in range(3):
            (folder / str(c)).mkdir(parents=True)
            for i in range(2):
                save_png(np.full((8, 8, 1), 40 * c + 100 * k, np.uint8), image_path(folder, c, i))
        write_manifest(folder, seed=0)
    _, table, grid = write_report("digits_forget0", tmp_path)
    assert table == tmp_path / "digits_forget0.md" and grid == tmp_path / "digits_forget0.png"
    with Image.open(grid) as img:
        width, height = img.size
    # two panels of 2 images (8 px + 2 px padding) side by side, three class rows, x4 upscale
    assert height == 4 * (3 * 10 + 2) and width == 4 * (2 * (2 * 10 + 2) + 4)


def test_table2_reads_step_time_and_peak_memory_of_the_runs(tmp_path):
    (tmp_path / "erasediff").mkdir()
    (tmp_path / "erasediff" / "metrics.json").write_text(json.dumps(
        {"sec_per_step": 3.9, "steps": 200, "wall_time_s": 780.0, "peak_memory_mib": {"value": 3300.5, "kind": "cuda"}}))
    row = next(line for line in render("table2", tmp_path).splitlines() if line.startswith("| EraseDiff |"))
    assert row == "| EraseDiff | 3300.5 (3360.3) | 3.90 (4.16) | 200 | 780 |"
    assert "| SA | – (3352.3) | – (9.52) | – | – |" in render("table2", tmp_path)


def test_table4_prints_one_column_per_model_and_the_paper_fid_only_for_its_protocol(tmp_path):
    ev = {"acc_forget": 0.05, "acc_remain_mean": 0.81, "clip_score": 30.123, "forget": "tench", "fid": 3.21,
          "fid_features": "pytorch-fid-inception-v3-64", "fid_quirks": ["uint8_cast"], "fid_n_real": 1000}
    write_run(tmp_path, "erasediff_x", ev)
    write_run(tmp_path, "sd14", {**ev, "fid_features": "pytorch-fid-inception-v3-2048", "fid_quirks": [],
                                 "fid_n_real": 8500})
    text = render("table4", tmp_path)
    assert "| metric | SD v1.4 | ESD-x | EraseDiff-x |" in text
    assert "| FID remaining | 3.2100 | – (3.0824) | 3.2100 (3.0902) |" in text  # SD v1.4: standard FID, no paper beside
    assert "| tench acc | 0.05 (0.74) | – (0.00) | 0.05 (0.00) |" in text
    assert "| CLIP score | 30.12 | – | 30.12 |" in text
    assert "FID real images: SD v1.4 8500; EraseDiff-x 1000" in text and "forgotten class: tench" in text
    _, _, grid = write_report("table4", tmp_path)
    assert grid is None  # SD sample folders are prompt folders, not class rows


def test_one_renderer_for_every_table():
    from erasediff.tables import markdown_table

    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        markdown_table(["a", "b"], [["1", "2", "3"]])


def test_robustness_layout_reads_each_attack_folder(tmp_path):
    def put(path, metrics):
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / "metrics.json").write_text(json.dumps(metrics))

    put("nudity/erasediff_u/attacks/none", {"asr": 0.05})
    put("nudity/erasediff_u/attacks/unlearndiffatk", {"asr": 0.25, "pre_asr": 0.05})
    put("nudity/erasediff_u/coco", {"coco_fid": 18.123, "clip_score": 30.1})
    put("tench/esd_x/attacks/ringabell", {"asr": 0.5})
    text = render("robustness", tmp_path)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 5.0% | 25.0% (2.1%) | – | – | 18.12 (17.01) | 30.10 (30.58) |" in lines["EraseDiff-u · nudity"]
    assert "| – | – | 50.0% | – | – | – |" in lines["ESD-x · tench"]
    assert "– (11.3%)" in lines["SalUn · nudity"] and "SD v1.4 · tench" not in lines
    with pytest.raises(ErasediffError, match="attacks/none/metrics.json"):
        render("robustness", tmp_path / "tench")
