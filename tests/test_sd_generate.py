"""`erasediff generate` (prompt CSV -> images + manifest, settings from the config's `generate` section) and
the prompt-CSV reader, on the tiny pipeline."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sd_fixtures import tiny_pipeline  # noqa: F401  (pytest fixture)

from erasediff.cli import main
from erasediff.data.prompts import read_prompt_csv
from erasediff.errors import DataError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG = str(Path(__file__).resolve().parents[1] / "StableDiffusion" / "configs" / "smoke" / "erasediff_x.yaml")

I2P_HEADER = "prompt,categories,hard,inappropriate_percentage,nudity_percentage,evaluation_seed,evaluation_guidance,case_number\n"


def test_i2p_columns_and_defaults(tmp_path):
    f = tmp_path / "i2p.csv"
    f.write_text(I2P_HEADER + '"a nude, person",sexual,1,90.0,80.0,4889,7,12\nchurch at night,,0,1,0,432,7.5,13\n')
    rows = read_prompt_csv(f)
    assert [(r.prompt, r.seed, r.guidance, r.case_number) for r in rows] == [
        ("a nude, person", 4889, 7.0, 12), ("church at night", 432, 7.5, 13)]
    g = tmp_path / "plain.csv"
    g.write_text("prompt\nnudity\nnaked\n")
    assert [(r.seed, r.case_number, r.guidance) for r in read_prompt_csv(g, default_seed=5)] == [(5, 0, None), (5, 1, None)]


@pytest.mark.parametrize("text, match", [
    ("", "no 'prompt' column"),
    ("prompt,seed\n", "no prompt rows"),
    ("text,seed\nnudity,1\n", "no 'prompt' column"),
    ("prompt,seed\nnudity,abc\n", "line 2"),
    ("prompt,seed\n,3\n", "line 2: empty prompt"),
    ("prompt,case_number\na,1\nb,1\n", "case numbers \\[1\\] repeat"),
])
def test_bad_prompt_csv(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(DataError, match=match):
        read_prompt_csv(f)


def _generate(pipeline, prompts, out, *sets):
    args = ["generate", "--config", CONFIG, "--set", f"model.pretrained={pipeline}", "--prompts", str(prompts),
            "--output-dir", str(out), "--device", "cpu", "--no-progress"]
    return args + [a for item in sets for a in ("--set", item)]


def test_generate_writes_manifest_and_resumes_identically(tiny_pipeline, tmp_path, capsys):
    prompts = tmp_path / "p.csv"
    prompts.write_text("case_number,prompt,evaluation_seed,num_images\n0,an image of a tench,4889,3\n1,an image of a church,432,\n")
    out = tmp_path / "images"
    args = _generate(tiny_pipeline, prompts, out, "generate.n_per_prompt=2", "generate.max_per_prompt=null",
                     "generate.batch_size=2")
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("wrote 5 images to") and "manifest" in last
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["0_0.png", "0_1.png", "0_2.png", "1_0.png", "1_1.png"]
    assert rows[0]["prompt"] == "an image of a tench" and rows[0]["seed"] == "4889" and rows[0]["guidance"] == "7.5"
    first = {r["path"]: np.asarray(Image.open(out / r["path"])) for r in rows}
    assert first["0_0.png"].shape == (16, 16, 3)  # generate.height / width of the smoke config
    # resume: a deleted image (in the middle of a row's second batch) comes back bit-identical
    (out / "0_2.png").unlink()
    assert main(args) == 0
    assert "wrote 1 images" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(out / "0_2.png")), first["0_2.png"])
    assert not np.array_equal(first["0_0.png"], first["0_1.png"])  # the stream continues across images
    # the config's cap: the first 2 images of each row, the same pixels
    capped = tmp_path / "capped"
    assert main(_generate(tiny_pipeline, prompts, capped, "generate.batch_size=2")) == 0
    assert sorted(p.name for p in capped.glob("*.png")) == ["0_0.png", "0_1.png", "1_0.png"]
    assert np.array_equal(np.asarray(Image.open(capped / "0_1.png")), first["0_1.png"])


def test_generate_bad_input_is_one_error_line(tiny_pipeline, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,evaluation_seed\n")
    good = tmp_path / "good.csv"
    good.write_text("prompt\nnudity\n")
    for args, message in (
        (_generate(tiny_pipeline, empty, tmp_path / "o"), "no prompt rows"),
        (_generate(tmp_path, good, tmp_path / "o"), "could not load pipeline"),
        (_generate(tiny_pipeline, good, tmp_path / "o", "generate.scheduler=magic"),
         "config key 'generate.scheduler' must be one of: lms, ddim, pndm, euler, euler_a, dpm (got 'magic')"),
        (_generate(tiny_pipeline, good, tmp_path / "o", "generate.width=20"), "'generate.width' must be a multiple of 8"),
        ([a for a in _generate(tiny_pipeline, good, tmp_path / "o") if a not in ("--prompts", str(good))],
         "generate needs a prompt CSV: pass --prompts CSV or set evaluate.prompts"),
    ):
        if "--prompts" not in args:  # the smoke config names evaluate.prompts: unset it
            args += ["--set", "evaluate.prompts=null"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err, err
        assert not (tmp_path / "o").exists()  # nothing written


def test_i2p_select_keeps_the_nude_rows_and_their_columns(tmp_path, capsys):
    from erasediff.data.prompts import main as prompts_main

    src = tmp_path / "i2p.csv"
    src.write_text(I2P_HEADER + '"a nude, person",sexual,1,90.0,80.0,4889,7,12\nchurch at night,,0,1,0,432,7.5,13\n'
                   'beach,sexual,0,60,50.0,7,7,14\nbath,sexual,0,60,50.5,8,7,15\n')
    out = tmp_path / "nude.csv"
    assert prompts_main(["i2p-select", str(src), str(out)]) == 0
    rows = read_prompt_csv(out)
    assert [(r.prompt, r.seed, r.case_number) for r in rows] == [("a nude, person", 4889, 12), ("bath", 8, 15)]
    assert "2 prompts" in capsys.readouterr().out
    assert prompts_main(["i2p-select", str(src), str(tmp_path / "none.csv"), "--min-nudity", "95"]) == 2
    assert capsys.readouterr().err.startswith("error: no row")
    assert not (tmp_path / "none.csv").exists()
