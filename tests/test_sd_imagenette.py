"""Table 4 evaluation (PAPER.md §5 "Imagenette", §6.4): class accuracy, remaining-class FID, CLIP score.

Offline and on CPU: a fixed fake classifier reads the class it "sees" from a pixel; FID runs on small
random extractors; CLIP is a 2-layer CLIPModel built from a config with the tokenizer of sd_fixtures.
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sd_fixtures import write_tokenizer

from erasediff.cli import main
from erasediff.data.prompts import IMAGENETTE_WNIDS, write_imagenette_manifest
from erasediff.errors import DataError, ErasediffError
from erasediff.metrics import imagenette as im
from erasediff.metrics.clip_score import clip_cosines, clip_score, clip_score_folder, tiny_random_clip
from erasediff.metrics.quirks import EvalQuirks

REPO = Path(__file__).resolve().parents[1]
PROMPTS = str(REPO / "StableDiffusion" / "prompts" / "imagenette.csv")
CLASSES = im.IMAGENETTE_CLASSES
OTHER = 255  # pixel code of "an ImageNet class that is no Imagenette class"


def write_generated(folder, codes: dict[int, list[int]], size: int = 16, seed: int = 0, manifest_cases: bool = True):
    """A `generate`-style folder: case c gets one image per code; pixel (0, 0) red = 20·code (the fake
    classifier's prediction: Imagenette class `code`, or OTHER), the rest random."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, cls_codes in codes.items():
        for k, code in enumerate(cls_codes):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            arr[0, 0, 0] = OTHER if code == OTHER else 20 * code
            name = f"{case}_{k}.png"
            Image.fromarray(arr).save(folder / name)
            rows.append([name, f"Image of {CLASSES[case]}", 0, 7.5, case, k][:6 if manifest_cases else 2])
    with (folder / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "prompt", "seed", "guidance", "case_number", "index"][:6 if manifest_cases else 2])
        w.writerows(rows)
    return folder


class PixelClassifier(torch.nn.Module):
    """Fixed fake ImageNet classifier: images in [-1, 1] -> logits (B, 1000), max at the class coded in pixel (0, 0)."""

    def forward(self, images):
        code = torch.round((images[:, 0, 0, 0] + 1) * 127.5).long()  # (B,) 0..255
        logits = torch.zeros(len(images), 1000)
        for b, v in enumerate(code.tolist()):
            logits[b, im.IMAGENET_INDEX[CLASSES[v // 20]] if v != OTHER else 999] = 1.0
        return logits


def test_accuracy_with_a_fixed_classifier(tmp_path):
    # tench: 3 of 4 seen as tench (1 as church); English springer: never; the other 8 classes: always
    codes = {0: [0, 0, 4, 0], 1: [OTHER, OTHER]} | {c: [c, c] for c in range(2, 10)}
    folder = write_generated(tmp_path / "gen", codes)
    acc = im.imagenette_accuracy(folder, PROMPTS, PixelClassifier(), batch_size=3)
    assert acc["acc_tench"] == acc["acc_forget"] == 0.75 and acc["n_tench"] == 4
    assert acc["acc_english_springer"] == 0.0 and acc["acc_parachute"] == 1.0 and acc["n_images"] == 22
    assert acc["acc_remain_mean"] == pytest.approx(8 / 9)
    # another forget class; a manifest without case_number (file name prefix) and a CSV without a class column
    other = write_generated(tmp_path / "gen2", codes, manifest_cases=False)
    acc2 = im.imagenette_accuracy(other, str(REPO / "StableDiffusion" / "prompts" / "imagenette_train.csv"), PixelClassifier(),
                                  forget="English_springer")
    assert acc2["acc_forget"] == 0.0 and acc2["acc_remain_mean"] == pytest.approx((0.75 + 8) / 9)


def test_torchvision_wrapper_preprocesses_and_returns_imagenet_logits():
    from torchvision.models import ResNet50_Weights, resnet18

    seen = {}

    def preprocess(x):
        seen["range"] = (float(x.min()), float(x.max()))
        return ResNet50_Weights.IMAGENET1K_V2.transforms()(x)

    torch.manual_seed(0)
    model = im.TorchvisionClassifier(resnet18(num_classes=1000), preprocess)
    images = torch.rand(2, 3, 40, 48) * 2 - 1
    assert model(images).shape == (2, 1000) and 0.0 <= seen["range"][0] < seen["range"][1] <= 1.0


def _real_from(folder, out, layout: str):
    """Copies of the generated non-tench images of `folder` as a real set (imagenette2 or manifest layout)."""
    wnid = {v: k for k, v in IMAGENETTE_WNIDS.items()}
    for p in sorted(folder.glob("*.png")):
        case = int(p.name.split("_")[0])
        if case:
            (out / wnid[CLASSES[case]]).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, out / wnid[CLASSES[case]] / p.name)
    if layout == "manifest":
        write_imagenette_manifest(out)
    return out


@pytest.mark.parametrize("layout", ["imagenette2", "manifest"])
def test_standard_fid_of_a_set_with_itself_is_zero(tmp_path, layout):
    gen = write_generated(tmp_path / "gen", {c: [c] * 4 for c in range(10)})
    real = _real_from(gen, tmp_path / "real" / "train", layout)
    extractor = im.smoke_extractor(2048)
    res = im.imagenette_fid(gen, PROMPTS, str(tmp_path / "real" if layout == "imagenette2" else real), extractor)
    assert res["n_generated"] == res["n_real"] == 36 and res["dims"] == 8 and res["protocol"] == "standard"
    assert abs(res["fid"]) < 1e-4


def test_fid_protocol_switch_changes_the_number(tmp_path):
    gen = write_generated(tmp_path / "gen", {c: [c] * 3 for c in range(10)})
    gen.joinpath("0_0.png").write_bytes(b"")  # the forget class is never read for the FID
    rng = np.random.default_rng(1)
    for wnid in IMAGENETTE_WNIDS:  # real images of another size: resized + center-cropped to 16 px
        (tmp_path / "real" / wnid).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
            arr[:3] = 0  # pure black rows: white after the uint8 cast's wrap-around
            Image.fromarray(arr).save(tmp_path / "real" / wnid / f"{i}.JPEG", quality=95)
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.net(x)

    standard = im.imagenette_fid(gen, PROMPTS, str(tmp_path / "real"), Recording(im.smoke_extractor(64)))
    assert any(len(torch.unique(x)) > 3 for x in seen)
    seen.clear()
    paper_protocol = im.fid_protocol("paper")
    assert paper_protocol.quirks == EvalQuirks.sd_table4() and paper_protocol.max_real == 1000
    paper = im.imagenette_fid(gen, PROMPTS, str(tmp_path / "real"), Recording(im.smoke_extractor(64)),
                              protocol=paper_protocol)
    allowed = torch.tensor([-1.0, 1 / 127.5 - 1, 1.0])
    assert all(torch.isin(x, allowed).all() for x in seen) and any((x == 1.0).any() for x in seen)
    assert standard["n_real"] == paper["n_real"] == 36 and standard["n_generated"] == 27
    assert np.isfinite(paper["fid"]) and abs(paper["fid"] - standard["fid"]) > 1e-3
    capped = im.imagenette_fid(gen, PROMPTS, str(tmp_path / "real"), im.smoke_extractor(64),
                               protocol=im.fid_protocol("standard", max_real=10))
    assert capped["n_real"] == 10 and capped["fid"] != pytest.approx(standard["fid"])
    with pytest.raises(ErasediffError, match="unknown FID protocol 'torchmetrics'"):
        im.fid_protocol("torchmetrics")


def test_select_real_is_class_balanced_and_excludes_the_forget_class():
    items = [(c, f"{c}-{i}") for c in CLASSES for i in range(5)]
    chosen = im.select_real(items, "tench", 12)
    classes = [c for c, _ in chosen]
    assert len(chosen) == 12 and "tench" not in classes and len(set(classes)) == 9
    assert max(classes.count(c) for c in set(classes)) == 2
    assert len(im.select_real(items, "tench", None)) == 45


def test_real_statistics_are_cached(tmp_path):
    gen = write_generated(tmp_path / "gen", {c: [c] * 3 for c in range(10)})
    real = im.RealImagenette(str(_real_from(gen, tmp_path / "real", "imagenette2")))
    protocol = im.fid_protocol("standard")
    first = im.real_statistics(real, "tench", (16, 16), im.smoke_extractor(2048), protocol, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1
    shutil.rmtree(tmp_path / "real")  # the second call reads the cache, not the images
    again = im.real_statistics(real, "tench", (16, 16), im.smoke_extractor(2048), protocol, cache_dir=tmp_path / "c")
    assert np.array_equal(first[0], again[0]) and first[2] == again[2] == 27


# ----------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A 2-layer CLIPModel from a config, with the byte-level tokenizer of sd_fixtures."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip_tok")
    write_tokenizer(folder)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": tok.model_max_length,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    return CLIPModel(config).eval(), processor


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_score_is_the_pairwise_cosine(tiny_clip):
    model, processor = tiny_clip
    images, prompts = _images(3), ["an image of a tench", "an image of a church", "a photo of a person wearing clothes"]
    cos = clip_cosines(images, prompts, model, processor, batch_size=2)
    with torch.no_grad():
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
        img = model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        txt = model.text_projection(model.text_model(input_ids=inputs["input_ids"],
                                                     attention_mask=inputs["attention_mask"]).pooler_output)
    assert torch.allclose(cos, torch.nn.functional.cosine_similarity(img, txt), atol=1e-5)
    assert cos.abs().max() <= 1.0 and len(set(cos.tolist())) == 3
    swapped = clip_cosines(images[:1], prompts[1:2], model, processor)
    assert swapped[0] == pytest.approx(float(torch.nn.functional.cosine_similarity(img[:1], txt[1:2])), abs=1e-5)
    score = clip_score(images, prompts, model, processor)
    assert score["clip_score"] == pytest.approx(100 * score["clip_cosine"]) and score["clip_n"] == 3
    assert score["clip_cosine"] == pytest.approx(float(cos.mean()), abs=1e-6)
    with pytest.raises(ErasediffError, match="one prompt per image"):
        clip_cosines(images, prompts[:2], model, processor)


def test_clip_score_of_a_folder_and_the_smoke_clip(tmp_path, tiny_clip):
    folder = write_generated(tmp_path / "gen", {0: [0, 0], 4: [4]})
    res = clip_score_folder(folder, *tiny_clip, batch_size=2)
    images = [Image.open(folder / n).convert("RGB") for n in ("0_0.png", "0_1.png", "4_0.png")]
    direct = clip_score(images, ["Image of tench"] * 2 + ["Image of church"], *tiny_clip)
    assert res["clip_n"] == 3 and res["clip_cosine"] == pytest.approx(direct["clip_cosine"], abs=1e-6)
    smoke = clip_score_folder(folder, *tiny_random_clip())
    assert -1.0 <= smoke["clip_cosine"] <= 1.0
    with pytest.raises(DataError, match="has no manifest.csv"):
        clip_score_folder(tmp_path, *tiny_clip)


# ------------------------------------------------------------------------------------ bad input, CLI
def test_bad_input_names_the_problem(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no manifest.csv"):
        im.imagenette_accuracy(empty, PROMPTS, PixelClassifier())
    (empty / "manifest.csv").write_text("path,prompt,case_number\n")
    with pytest.raises(DataError, match="lists no images"):
        im.imagenette_accuracy(empty, PROMPTS, PixelClassifier())
    with pytest.raises(DataError, match="'goldfish' is not an Imagenette class; valid: tench, English springer"):
        im.imagenette_accuracy(empty, PROMPTS, PixelClassifier(), forget="goldfish")
    only_church = write_generated(tmp_path / "church", {4: [4, 4]})
    with pytest.raises(DataError, match="no generated image of the forget class 'tench'"):
        im.imagenette_accuracy(only_church, PROMPTS, PixelClassifier())
    stray = write_generated(tmp_path / "stray", {0: [0]})
    (stray / "manifest.csv").write_text("path,prompt,case_number\n0_0.png,Image of tench,42\n")
    with pytest.raises(DataError, match="case number '42', which is not in"):
        im.imagenette_accuracy(stray, PROMPTS, PixelClassifier())
    with pytest.raises(DataError, match="no such folder"):
        im.RealImagenette(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no real Imagenette images"):
        im.RealImagenette(str(tmp_path))  # neither class folders nor a manifest.csv
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(DataError, match="needs the `datasets` package.*pass its train/ folder"):
        im.RealImagenette("frgfm/imagenette")


def test_cli_rejects_bad_input_before_building_networks(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    # no --offline-smoke: a network download would fail offline, so a data error proves the order of checks
    for argv, msg in ((["sd14=" + str(empty)], "has no manifest.csv"),
                      (["sd14"], "NAME=DIR"),
                      (["sd14=" + str(empty), "--forget", "goldfish"], "not an Imagenette class")):
        assert main(["imagenette-eval", *argv, "--prompts", PROMPTS]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err


def test_cli_offline_smoke_prints_table4_and_writes_json(tmp_path, capsys):
    codes = {c: [c, c] for c in range(10)}
    folders = {name: write_generated(tmp_path / name, codes, seed=i) for i, name in enumerate(("sd14", "esd_x", "mine"))}
    real = _real_from(folders["sd14"], tmp_path / "real", "imagenette2")
    out = tmp_path / "t4" / "table4.json"
    code = main(["imagenette-eval", *(f"{n}={f}" for n, f in folders.items()), "--prompts", PROMPTS, "--real", str(real),
                 "--fid-protocol", "paper", "--clip", "--offline-smoke", "--device", "cpu", "--output", str(out),
                 "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and text.strip().splitlines()[-1] == f"wrote {out} and {out.with_suffix('.md')}"
    assert "| | SD v1.4 [sd14] | ESD-x [esd_x] | mine |" in text and "(4.8883)" in text and "(0.74)" in text
    assert "OFFLINE SMOKE RUN" in text and "CLIP score" in text
    saved = json.loads(out.read_text())
    assert saved["smoke"] and saved["fid_protocol"] == "paper" and set(saved["models"]) == set(folders)
    m = saved["models"]["sd14"]
    assert m["n_real"] == 18 and m["n_generated"] == 18 and m["clip_n"] == 20 and "acc_parachute" in m
    standard = im.table4(saved["models"], "tench", "standard", str(real))
    assert "4.8883" not in standard and "--fid-protocol paper" in standard
