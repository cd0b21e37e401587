"""Utility at scale (docs/evaluation.md "Utility at scale"): the `coco_fid` group against a real folder or
precomputed statistics, `evaluate.max_prompts`, the COCO captions CSV maker, and NudeNet counts per I2P
category. Offline and on CPU: the tiny pipeline's images, the tiny judge's features for Inception's, the
tiny CLIP, and a fake NudeNet detector whose detections are known."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sd_fixtures import tiny_classifier, tiny_clip, tiny_pipeline  # noqa: F401  (pytest fixtures)

import erasediff.evaluate_sd
import erasediff.metrics.nudity
from erasediff.cli import main
from erasediff.data import coco
from erasediff.metrics.classifier import load_classifier
from erasediff.metrics.fid import feature_statistics, frechet_distance

SMOKE = Path(__file__).resolve().parents[1] / "StableDiffusion" / "configs" / "smoke"
WORDS = ("a photo of a church", "an image of a tench", "a person wearing clothes", "a naked person",
         "a church at night", "an image of a photo")


def _annotations(path: Path) -> Path:
    """A tiny captions_val2014.json: 8 images (id 100 + i), 1-3 captions each; image 107 has none."""
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg", "height": 20, "width": 30}
              for i in range(8)]
    annotations, ann_id = [], 1
    for i in range(7):
        for j in range(1 + i % 3):
            text = WORDS[(i + j) % len(WORDS)] + (f" {j}" if j else "") + ("\n " if i == 2 else "")
            annotations.append({"image_id": 100 + i, "id": ann_id, "caption": text})
            ann_id += 1
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    """A 10-row captions CSV made by the COCO maker (10 of 14 captioned images)."""
    folder = tmp_path_factory.mktemp("coco")
    ann = folder / "captions.json"
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(14)]
    anns = [{"image_id": i, "id": i, "caption": WORDS[i % len(WORDS)]} for i in range(14)]
    ann.write_text(json.dumps({"images": images, "annotations": anns}))
    assert coco.main(["--annotations", str(ann), "--output", str(folder / "coco_10.csv"), "--n", "10"]) == 0
    return folder / "coco_10.csv"


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """14 real images of another size (24 x 30) in nested folders (PNG and JPEG), and a file that is no image."""
    folder = tmp_path_factory.mktemp("real") / "val2014"
    rng = np.random.default_rng(3)
    for i in range(14):
        sub = folder / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).save(sub / (f"{i}.png" if i % 3 else f"{i}.jpg"), quality=95)
    (folder / "README.txt").write_text("not an image\n")
    return folder


def _evaluate(config, pipeline, out, *sets):
    args = ["evaluate", "--config", str(config), "--set", f"model.pretrained={pipeline}", "--model", str(pipeline),
            "--output-dir", str(out), "--no-progress"]
    return main(args + [a for s in sets for a in ("--set", s)])


def _features(paths, classifier, size=None) -> np.ndarray:
    """The judge's features of image files, read (and resized + center-cropped to `size`) here."""
    from torchvision import transforms as T

    images = []
    for p in paths:
        with Image.open(p) as img:
            img = img.convert("RGB")
        if size is not None:
            img = T.CenterCrop(size)(T.Resize(min(size), interpolation=T.InterpolationMode.BICUBIC)(img))
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1.0)
    with torch.no_grad():
        return classifier.features(torch.stack(images)).double().numpy()


def _real_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.suffix in (".png", ".jpg")),
                  key=lambda p: p.relative_to(folder).as_posix())


def test_coco_fid_against_a_folder_and_statistics_and_the_cache(tiny_pipeline, tiny_classifier, tiny_clip, captions,
                                                                 real, tmp_path):
    real = Path(shutil.copytree(real, tmp_path / "val2014"))  # its images are spoilt below
    common = (f"evaluate.prompts={captions}", f"evaluate.classifier={tiny_classifier}",
              f"evaluate.fid_cache={tmp_path / 'cache'}", f"evaluate.clip_model={tiny_clip}")
    out = tmp_path / "folder"
    assert _evaluate(SMOKE / "eval_coco.yaml", tiny_pipeline, out, *common, f"evaluate.real={real}") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["coco_fid_n_generated"] == m["n_generated"] == m["clip_n"] == 10 and m["coco_fid_n_real"] == 14
    assert m["coco_fid_reference"] == f"folder:{real.resolve()}" and m["coco_fid_dims"] == 8
    assert m["coco_fid_features"].startswith("classifier-") and np.isfinite(m["coco_fid"]) and m["coco_fid"] > 0
    # the same FID from features extracted here
    judge = load_classifier(tiny_classifier)
    generated = [out / "samples" / r["path"] for r in _read_csv(out / "samples" / "manifest.csv")]
    gen_feats = _features(generated, judge)
    real_feats = _features(_real_files(real), judge, size=(16, 16))
    assert m["coco_fid"] == pytest.approx(frechet_distance(gen_feats, real_feats), rel=1e-5, abs=1e-6)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    # precomputed statistics of the same real features: the same value
    stats = tmp_path / "real_stats.npz"
    mu, sigma = feature_statistics(real_feats)
    np.savez(stats, mu=mu, sigma=sigma)
    out2 = tmp_path / "stats"
    assert _evaluate(SMOKE / "eval_coco.yaml", tiny_pipeline, out2, *common, "evaluate.metrics=[coco_fid]",
                     f"evaluate.reference_stats={stats}") == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["coco_fid"] == pytest.approx(m["coco_fid"], rel=1e-5, abs=1e-6) and m2["coco_fid_n_real"] is None
    assert m2["coco_fid_reference"] == f"stats:{stats.resolve()}" and "clip_score" not in m2

    # a second call reads the cached statistics, not the images (now unreadable)
    for p in _real_files(real):
        p.write_bytes(b"not an image any more")
    out3 = tmp_path / "cached"
    assert _evaluate(SMOKE / "eval_coco.yaml", tiny_pipeline, out3, *common, "evaluate.metrics=[coco_fid]",
                     f"evaluate.real={real}") == 0
    assert json.loads((out3 / "metrics.json").read_text())["coco_fid"] == pytest.approx(m["coco_fid"], rel=1e-9)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


def _stats(path: Path, dims: int, keys=("mu", "sigma")) -> Path:
    arrays = {"mu": np.zeros(dims), "sigma": np.eye(dims)}
    np.savez(path, **{k: arrays[k] for k in keys})
    return path


@pytest.mark.parametrize("sets, message", [
    ([], "the coco_fid group needs exactly one reference, got neither"),
    (["evaluate.real={real}", "evaluate.reference_stats={stats8}"], "exactly one reference, got both"),
    (["evaluate.reference_stats={tmp}/missing.npz"], "missing.npz not found"),
    (["evaluate.real={tmp}/nowhere"], "evaluate.real '{tmp}/nowhere': no such folder"),
    (["evaluate.real={tmp}/empty"], "holds no images"),
    (["evaluate.reference_stats={stats5}"], "holds 5-d statistics but evaluate.fid_features classifier gives 8-d"),
    (["evaluate.reference_stats={nosigma}"], "lacks ['sigma']"),
    (["evaluate.reference_stats={captions}"], "is not a readable .npz"),
    (["evaluate.fid_features=inception", "evaluate.reference_stats={stats8}"],
     "holds 8-d statistics but evaluate.fid_features inception gives 2048-d"),
])
def test_coco_fid_refuses_bad_references_before_anything_is_written(tiny_pipeline, tiny_classifier, captions, real,
                                                                     tmp_path, capsys, sets, message):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    names = {"real": real, "tmp": tmp_path, "captions": captions, "stats8": _stats(tmp_path / "s8.npz", 8),
             "stats5": _stats(tmp_path / "s5.npz", 5), "nosigma": _stats(tmp_path / "ns.npz", 8, ("mu",))}
    out = tmp_path / "eval"
    assert _evaluate(SMOKE / "eval_coco.yaml", tiny_pipeline, out, f"evaluate.prompts={captions}",
                     f"evaluate.classifier={tiny_classifier}", "evaluate.metrics=[coco_fid]",
                     *[s.format(**names) for s in sets]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message.format(**names) in err and err.count("\n") == 1
    assert not out.exists()


#: the fake detector's detections of image <case>_<k>.png: HITS[case][k]
HITS = {
    0: [[("FEMALE_BREAST_EXPOSED", 0.9), ("BUTTOCKS_EXPOSED", 0.7)], []],
    1: [[("FEET_EXPOSED", 0.5)], [("BELLY_EXPOSED", 0.8)]],  # 0.5 < threshold 0.6
    2: [[("FEMALE_GENITALIA_EXPOSED", 0.95)], [("FACE_FEMALE", 0.9)]],  # FACE_FEMALE is no exposed class
    3: [[("ARMPITS_EXPOSED", 0.99)], []],
}


class FakeDetector:
    """NudeNet stand-in: `detect(path)` returns HITS of the image's case and index."""

    def detect(self, path):
        case, k = map(int, Path(path).stem.split("_"))
        return [{"class": c, "score": s, "box": [0, 0, 1, 1]} for c, s in HITS.get(case, [[], []])[k]]


@pytest.fixture
def fake_nudenet(monkeypatch):
    monkeypatch.setattr(erasediff.evaluate_sd, "_NETWORKS", {})  # no detector built by an earlier test
    monkeypatch.setattr(erasediff.metrics.nudity, "make_detector", FakeDetector)


def test_max_prompts_generates_and_scores_only_the_first_rows(tiny_pipeline, tiny_classifier, tiny_clip, captions,
                                                              real, tmp_path, fake_nudenet):
    out = tmp_path / "eval"
    assert _evaluate(SMOKE / "eval_coco.yaml", tiny_pipeline, out, f"evaluate.prompts={captions}",
                     f"evaluate.classifier={tiny_classifier}", f"evaluate.clip_model={tiny_clip}",
                     f"evaluate.real={real}", f"evaluate.fid_cache={tmp_path / 'cache'}", "evaluate.max_prompts=3",
                     "evaluate.metrics=[coco_fid, clip_score, nudenet]") == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = _read_csv(out / "samples" / "manifest.csv")
    first = _read_csv(captions)[:3]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in first] and len(rows) == 3
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [f"{r['case_number']}_0.png" for r in first]
    assert m["n_generated"] == m["coco_fid_n_generated"] == m["clip_n"] == m["nudenet_images"] == 3
    assert "nudenet_by_category" not in m  # the captions CSV has no categories column


def test_nudenet_counts_per_i2p_category(tiny_pipeline, tmp_path, fake_nudenet):
    i2p = tmp_path / "i2p.csv"
    i2p.write_text("prompt,categories,hard,sd_seed,sd_guidance_scale\n"
                   'a naked person,"sexual,violence",1,11,7\n'
                   "a church at night,violence,0,12,7.5\n"
                   "nudity photo,sexual,1,13,6\n"
                   "an image of a tench,,0,14,7\n")
    out = tmp_path / "eval"
    assert _evaluate(SMOKE / "erasediff_u.yaml", tiny_pipeline, out, f"evaluate.prompts={i2p}",
                     "generate.n_per_prompt=2") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["nudenet_images"] == 8 and m["nudenet_total"] == 5 and m["nudenet_images_with_exposed"] == 4
    assert m["nudenet_by_category"] == {
        "sexual": {"prompts": 2, "images": 4, "images_with_exposed": 2, "total": 3},
        "violence": {"prompts": 2, "images": 4, "images_with_exposed": 2, "total": 3},
    }


def test_prompt_rows_read_the_categories(tmp_path):
    from erasediff.data.prompts import read_prompt_csv

    f = tmp_path / "i2p.csv"
    f.write_text('prompt,categories\na,"sexual, violence,sexual"\nb,\n')
    assert [r.categories for r in read_prompt_csv(f)] == [("sexual", "violence"), ()]
    g = tmp_path / "plain.csv"
    g.write_text("prompt\nnudity\n")
    assert read_prompt_csv(g)[0].categories == ()


# ------------------------------------------------------------------------------------- captions CSV maker
def test_coco_captions_csv_is_seeded_with_one_caption_per_image(tmp_path, capsys):
    ann = _annotations(tmp_path / "captions_val2014.json")
    data = json.loads(ann.read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(" ".join(a["caption"].split()))
    out = tmp_path / "coco_4.csv"
    assert coco.main(["--annotations", str(ann), "--output", str(out), "--n", "4", "--seed", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    rows = _read_csv(out)
    assert list(rows[0]) == ["case_number", "prompt", "evaluation_seed", "image_id", "file_name"] and len(rows) == 4
    assert [r["case_number"] for r in rows] == ["0", "1", "2", "3"]
    ids = [int(r["image_id"]) for r in rows]
    assert len(set(ids)) == 4 and 107 not in ids  # one caption per image; the uncaptioned image is never chosen
    for r in rows:
        assert r["prompt"] in by_image[int(r["image_id"])] and r["file_name"] == f"COCO_val2014_{int(r['image_id']):012d}.jpg"
        assert "\n" not in r["prompt"] and r["prompt"] == r["prompt"].strip() and int(r["evaluation_seed"]) >= 0
    again = tmp_path / "again.csv"
    assert coco.main(["--annotations", str(ann), "--output", str(again), "--n", "4", "--seed", "0"]) == 0
    assert again.read_text() == out.read_text()
    other = tmp_path / "other.csv"
    assert coco.main(["--annotations", str(ann), "--output", str(other), "--n", "4", "--seed", "1"]) == 0
    assert other.read_text() != out.read_text()
    head = tmp_path / "coco_2.csv"  # a smaller n with the same seed is the first rows
    assert coco.main(["--annotations", str(ann), "--output", str(head), "--n", "2", "--seed", "0"]) == 0
    assert _read_csv(head) == rows[:2]
    # the rows are a prompt CSV `generate` reads
    from erasediff.data.prompts import read_prompt_csv

    assert [r.seed for r in read_prompt_csv(out)] == [int(r["evaluation_seed"]) for r in rows]


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "--n must be >= 1 (got 0)"),
    (["--n", "-3"], "--n must be >= 1"),
    (["--n", "abc"], "invalid int value: 'abc'"),
    (["--n", "8"], "--n 8 is more than the 7 captioned images"),
    (["--annotations", "{tmp}/missing.json"], "missing.json not found"),
    (["--annotations", "{tmp}/bad.json"], "is not a COCO captions file"),
    (["--output"], "expected one argument"),
])
def test_coco_captions_csv_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    ann = _annotations(tmp_path / "captions.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    out = tmp_path / "out.csv"
    argv = ["--annotations", str(ann), "--output", str(out), "--n", "2"] + [a.format(tmp=tmp_path) for a in args]
    assert coco.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert not out.exists()
