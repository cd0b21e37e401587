"""CelebA-HQ attribute data (forget set = images with an attribute) and D_r from generative replay."""

import pytest
import torch
from helpers import REPO, TINY, tiny_config
from PIL import Image

from erasediff.build import build_run
from erasediff.data import load_dataset
from erasediff.errors import ConfigError, DataError
from erasediff.experiment import load_config

ATTRS = ["Bald", "Eyeglasses", "Smiling"]
# file name -> values of ATTRS in {-1, 1}; two of five images wear eyeglasses
ANNOTATIONS = {"0.jpg": (-1, 1, 1), "1.jpg": (-1, -1, 1), "2.jpg": (1, -1, -1), "3.jpg": (-1, 1, -1), "4.jpg": (1, -1, 1)}


def write_celebahq(root, rows=ANNOTATIONS, names=ATTRS):
    """A CelebAMask-HQ layout: root/CelebA-HQ-img/<i>.jpg + root/CelebAMask-HQ-attribute-anno.txt."""
    img_dir = root / "CelebA-HQ-img"
    img_dir.mkdir(parents=True)
    for k, name in enumerate(rows):
        Image.new("RGB", (12, 10), (40 * k, 255 - 40 * k, 128)).save(img_dir / name)
    lines = [str(len(rows)), " ".join(names)] + [f"{f}  " + " ".join(map(str, v)) for f, v in rows.items()]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    return img_dir


def test_celebahq_labels_are_the_attribute_column(tmp_path):
    img_dir = write_celebahq(tmp_path)
    data = load_dataset("celebahq", root=str(img_dir), attribute="Eyeglasses", image_size=8)
    assert data.labels.tolist() == [1, 0, 0, 1, 0]
    assert (data.num_classes, data.class_names, data.channels, data.image_size) == (2, ["not_Eyeglasses", "Eyeglasses"], 3, 8)
    x, y = data.dataset[3]
    assert x.shape == (3, 8, 8) and y == 1 and -1.0 <= x.min() and x.max() <= 1.0
    smiling = load_dataset("celebahq", root=str(img_dir), attribute="Smiling", image_size=8)
    assert smiling.labels.tolist() == [1, 1, 0, 0, 1]


@pytest.mark.parametrize("case, message", [
    ("unknown_attribute", "unknown CelebA attribute 'Glasses'.*valid attributes: Bald, Eyeglasses, Smiling"),
    ("missing_file", "attribute file not found"),
    ("missing_image", "1 of 5 images listed .* are missing .*first: 2.jpg"),
    ("bad_line", "line 4: expected '<file> ' followed by 3 values"),
    ("empty", "empty or truncated"),
])
def test_celebahq_bad_input_names_the_problem(tmp_path, case, message):
    img_dir = write_celebahq(tmp_path)
    anno = tmp_path / "CelebAMask-HQ-attribute-anno.txt"
    attribute = "Glasses" if case == "unknown_attribute" else "Eyeglasses"
    if case == "missing_file":
        anno.unlink()
    elif case == "missing_image":
        (img_dir / "2.jpg").unlink()
    elif case == "bad_line":
        anno.write_text(anno.read_text().replace("1.jpg  -1 -1 1", "1.jpg  -1 0"))
    elif case == "empty":
        anno.write_text("")
    with pytest.raises(DataError, match=message):
        load_dataset("celebahq", root=str(img_dir), attribute=attribute, image_size=8)


def test_celebahq_config_checks_the_attribute_keys():
    cfg = REPO / "DDPM" / "configs" / "uncond" / "celebahq_eyeglasses.yaml"
    assert load_config(cfg).data.attribute == "Eyeglasses"
    with pytest.raises(ConfigError, match="'data.attribute' is required for dataset celebahq"):
        load_config(cfg, ["data.attribute=null"])
    with pytest.raises(ConfigError, match="apply to dataset celebahq only"):
        tiny_config("erasediff", "data.attribute=Smiling")


def test_uncond_erasediff_forgets_an_attribute_end_to_end(tmp_path):
    img_dir = write_celebahq(tmp_path)
    cfg = load_config(REPO / "DDPM" / "configs" / "uncond" / "celebahq_eyeglasses.yaml", [
        *TINY, "model.pretrained=null", "model.arch.sample_size=8", "model.arch.attention_head_dim=8",
        "data.image_size=8", f"data.root={img_dir}", "data.num_workers=0", "data.batch_size=2",
        "train.steps=2", "sample.steps=2", "sample.grid_per_class=1", "train.lr=1e-2",
    ])
    from erasediff.losses import denoising_loss

    first = build_run(cfg)
    forget_batch, remain_batch = next(first.data.forget), next(first.data.remain)
    assert forget_batch[1].tolist() == [1, 1] and set(remain_batch[1].tolist()) == {0}

    def forget_eps_loss_after(method_overrides: list[str]) -> float:
        """The ordinary ε-loss on the attribute's images after 5 steps (same init, batches and noise)."""
        run = build_run(cfg.model_copy(update={"method": load_config(
            REPO / "DDPM" / "configs" / "uncond" / "celebahq_eyeglasses.yaml", method_overrides).method}))
        for _ in range(5):
            logs = run.method.update(run.state, forget_batch, remain_batch)
        assert {"loss_r"} <= set(logs)
        x0, cond = run.state.backbone.encode(forget_batch)
        with torch.no_grad():
            return float(denoising_loss(run.state.backbone, run.state.model, x0, cond, torch.Generator().manual_seed(0))[0])

    erased = forget_eps_loss_after(["method.block_size=2", "method.inner_steps=1", "method.lambda_value=1.0"])
    kept = forget_eps_loss_after(["method.name=finetune"])
    assert erased > kept  # EraseDiff's λ·L_f term pushes the attribute's images away; Finetune's step does not


# --------------------------------------------------------------------------- generative replay as D_r
def test_generated_remain_replaces_real_remaining_data(tmp_path):
    cfg = tiny_config("erasediff_gr", "data.remain_generated=10", "data.batch_size=6", "sample.steps=2")
    run = build_run(cfg, progress=False)
    images, labels = run.data.remain.dataset.tensors
    # 10 rounded up to a multiple of the 9 remaining digits: 2 per class, never the forgotten 0
    assert torch.bincount(labels, minlength=10).tolist() == [0] + [2] * 9
    assert images.shape == (18, 1, 16, 16) and images.abs().max() <= 1.0
    real = run.dataset.dataset.tensors[0]
    assert not any(torch.equal(img, r) for img in images[:3] for r in real)  # samples, not training images
    batch_x, batch_y = next(run.data.remain)
    rows = [next(i for i in range(len(images)) if torch.equal(images[i], x)) for x in batch_x]
    assert torch.equal(labels[rows], batch_y)  # batches are drawn from the generated set
    # a function of the config alone: a second build (as --resume does) regenerates the same set
    again = build_run(cfg, progress=False).data.remain.dataset.tensors
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)


def test_generated_remain_needs_a_conditional_model(tmp_path):
    cfg = tiny_config("erasediff_gr", "model.backbone=uncond", "model.arch.attention_head_dim=8", "sample.steps=2",
                      "sample.guidance=0")
    with pytest.raises(ConfigError, match="remain_source 'generated' .* needs a conditional model"):
        build_run(cfg, progress=False)
    assert not (tmp_path / "run").exists()
