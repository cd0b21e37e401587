"""Sample folders: same images as in-memory sampling, resumable, extendable, refused when foreign, sharded."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, SMOKE, TINY, tiny_config

from erasediff.build import build_run
from erasediff.errors import ErasediffError
from erasediff.sample_folders import read_samples, sample_to_folder
from erasediff.samplers import class_noise, sample_classes

# DDIM with eta 1 draws fresh noise every step, so the per-unit generators are exercised too
STOCHASTIC = ["sample.steps=3", "sample.eta=1.0", "sample.batch_size=2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    run = build_run(tiny_config("pretrain"))
    path = tmp_path_factory.mktemp("model")
    run.state.model.save_pretrained(path)
    return path


def test_class_noise_of_n_images_is_a_prefix_of_a_longer_draw():
    assert torch.equal(class_noise([3], 3, (1, 16, 16), 7), class_noise([3], 5, (1, 16, 16), 7)[:3])
    assert not torch.equal(class_noise([3], 3, (1, 16, 16), 7), class_noise([4], 3, (1, 16, 16), 7))


def test_folder_holds_the_in_memory_samples_up_to_uint8_rounding(model_dir, tmp_path):
    cfg = tiny_config("erasediff", *STOCHASTIC)
    info = sample_to_folder(cfg, str(model_dir), tmp_path / "s", {0: 3, 5: 2}, progress=False)
    assert info == {"root": str(tmp_path / "s"), "sampled": 5, "skipped": 0, "images": 5}
    images, labels = read_samples(tmp_path / "s", {0: 3, 5: 2}, channels=1)
    run = build_run(tiny_config("pretrain", f"model.pretrained={model_dir}", "train.ema_decay=null", *STOCHASTIC))
    mem0, _ = sample_classes(run.state.backbone, run.state.model, [0], 3, (1, 16, 16), cfg.sample, progress=False)
    mem5, _ = sample_classes(run.state.backbone, run.state.model, [5], 2, (1, 16, 16), cfg.sample, progress=False)
    assert labels.tolist() == [0, 0, 0, 5, 5]
    assert (images - torch.cat([mem0, mem5])).abs().max() <= 1 / 255 + 1e-6  # 8-bit PNG: half a level of 2/255
    manifest = (tmp_path / "s" / "manifest.csv").read_text().splitlines()
    assert manifest == ["path,class,seed,index", "0/00000.png,0,1234,0", "0/00001.png,0,1234,1", "0/00002.png,0,1234,2",
                        "5/00000.png,5,1234,0", "5/00001.png,5,1234,1"]


def test_interrupted_folder_resumes_and_a_larger_n_extends_it(model_dir, tmp_path):
    cfg = tiny_config("erasediff", *STOCHASTIC)
    root = tmp_path / "s"
    sample_to_folder(cfg, str(model_dir), root, {1: 4}, progress=False)
    first = {p.name: p.read_bytes() for p in (root / "1").iterdir()}
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "1").iterdir()}
    (root / "1" / "00003.png").unlink()  # as if killed during the second unit (images 2, 3)
    info = sample_to_folder(cfg, str(model_dir), root, {1: 4}, progress=False)
    assert (info["sampled"], info["skipped"]) == (2, 2)
    assert {p.name: p.read_bytes() for p in (root / "1").iterdir()} == first
    assert (root / "1" / "00000.png").stat().st_mtime_ns == stamps["00000.png"]  # finished unit untouched
    info = sample_to_folder(cfg, str(model_dir), root, {1: 6}, progress=False)
    assert (info["sampled"], info["skipped"]) == (2, 4)
    assert all((root / "1" / n).read_bytes() == b for n, b in first.items())
    assert len((root / "manifest.csv").read_text().splitlines()) == 1 + 6


def test_folder_of_another_sampler_or_unknown_content_is_refused(model_dir, tmp_path):
    root = tmp_path / "s"
    sample_to_folder(tiny_config("erasediff", *STOCHASTIC), str(model_dir), root, {1: 1}, progress=False)
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.raises(ErasediffError, match=r"another model or sampler \(differs in: sample"):
        sample_to_folder(tiny_config("erasediff", *STOCHASTIC, "sample.steps=4"), str(model_dir), root, {1: 2},
                         progress=False)
    assert sorted(p.name for p in root.rglob("*")) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ErasediffError, match="not empty and holds no sample.json"):
        sample_to_folder(tiny_config("erasediff"), str(model_dir), other, {1: 1}, progress=False)


def test_two_processes_write_the_same_folder_as_one(model_dir, tmp_path):
    """Two processes (torchrun, as on a CPU machine; `accelerate launch` on GPUs) split the units; the folder
    equals a one-process one."""
    args = ["sample", "--config", str(SMOKE / "erasediff.yaml"), "--model", str(model_dir), "--n-per-class", "3",
            "--classes", "2", "7", "--no-progress"]
    for item in (*TINY, *STOCHASTIC):
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "erasediff", *args, "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "erasediff", *args, "--set", "device=cpu", "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    infos = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    # 4 units (2 classes x [0, 2), [2, 3)), two each: 3 images per process
    assert sorted(i["sampled_by_this_process"] for i in infos) == [3, 3] and infos[0]["processes"] == 2
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png") if p.name != "grid.png")
    assert len(files) == 6
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    assert json.loads((tmp_path / "two" / "sample.json").read_text())["model"] == str(model_dir)
