"""SA's CIFAR10 evaluation classifier (ResNet34 at 224 px) on tiny random data, and its config path."""

import json

import pytest
import torch
from helpers import tiny_config
from PIL import Image

from erasediff.classifier_training import train_eval_classifier
from erasediff.errors import ConfigError, ErasediffError
from erasediff.metrics import (
    DigitsCNN,
    ResNetClassifier,
    build_classifier,
    classifier_outputs,
    load_classifier,
    save_classifier,
    train_classifier,
)


def _cifar_like(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1, torch.arange(n) % 10


def _train(**kw):
    x, y = _cifar_like()
    args = dict(epochs=1, batch_size=8, lr=1e-3, seed=0, progress=False, in_channels=3, image_size=32,
                arch="resnet34", input_size=32, pretrained=False)
    return train_classifier(x, y, **{**args, **kw}), x


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    return _train()


def test_one_step_of_training_then_save_load_gives_identical_outputs(trained, tmp_path):
    model, x = trained
    assert isinstance(model, ResNetClassifier) and not model.training
    logits, feats = classifier_outputs(model, x, batch_size=3)
    assert logits.shape == (8, 10) and feats.shape == (8, 512)  # features: the pooled 512-d vector
    save_classifier(model, tmp_path / "clf", extra={"test_acc": 0.5})
    info = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert (info["arch"], info["input_size"], info["num_classes"], info["test_acc"]) == ("resnet34", 32, 10, 0.5)
    loaded = load_classifier(tmp_path / "clf")
    assert isinstance(loaded, ResNetClassifier) and not loaded.training
    loaded_logits, loaded_feats = classifier_outputs(loaded, x)
    assert torch.equal(loaded_logits, logits) and torch.equal(loaded_feats, feats)  # BN statistics saved too


def test_seeded_training_with_separate_head_and_body_learning_rates(trained):
    # SA: body lr 1e-5, fc lr 1e-4. With body lr 0 only the fc moves; the seed fixes the start.
    model, _ = _train(lr=0.0, lr_head=1e-2, augment=False)
    default_lr, _ = trained  # same seed, lr 1e-3 for every layer
    with torch.random.fork_rng():
        torch.manual_seed(0)
        initial = build_classifier("resnet34", in_channels=3, image_size=32, input_size=32)
    assert torch.equal(model.conv1.weight, initial.conv1.weight)
    assert torch.equal(model.layer4[2].conv2.weight, initial.layer4[2].conv2.weight)
    assert not torch.equal(model.fc.weight, initial.fc.weight)
    assert not torch.equal(default_lr.conv1.weight, initial.conv1.weight)
    torch.manual_seed(12345)  # the caller's global RNG state does not change the result
    again, _ = _train(lr=0.0, lr_head=1e-2, augment=False)
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_the_model_resizes_32px_inputs_itself():
    model = build_classifier("resnet34", in_channels=3, image_size=32, input_size=64).eval()
    x, _ = _cifar_like(2)
    big = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model(big))
    assert build_classifier("resnet34", in_channels=3, image_size=32).config["input_size"] == 224  # SA's 224 px


def test_bad_architectures_are_refused(tmp_path):
    with pytest.raises(ErasediffError, match="3 channels"):
        build_classifier("resnet34", in_channels=1, image_size=16)
    with pytest.raises(ErasediffError, match="valid archs"):
        build_classifier("vgg", in_channels=3, image_size=32)
    with pytest.raises(ErasediffError, match="resnet34 only"):
        build_classifier("digits_cnn", pretrained=True)
    save_classifier(DigitsCNN(), tmp_path / "c")
    config = json.loads((tmp_path / "c" / "classifier.json").read_text())
    (tmp_path / "c" / "classifier.json").write_text(json.dumps({**config, "arch": "vit"}))
    with pytest.raises(ErasediffError, match="'vit'"):
        load_classifier(tmp_path / "c")


def test_digits_classifiers_saved_before_the_arch_key_still_load(tmp_path):
    model = DigitsCNN().eval()
    save_classifier(model, tmp_path / "old")
    config = json.loads((tmp_path / "old" / "classifier.json").read_text())
    assert config.pop("arch") == "digits_cnn"
    (tmp_path / "old" / "classifier.json").write_text(json.dumps(config))
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(load_classifier(tmp_path / "old")(x), model(x))


def test_train_classifier_command_path_with_resnet34_on_an_image_folder(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(3):
                arr = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(arr).save(tmp_path / "imgs" / split / c / f"{i}.png")
    cfg = tiny_config("erasediff", "data.dataset=folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=32",
                      "data.forget_classes=[0]", "classifier.arch=resnet34", "classifier.pretrained=false",
                      "classifier.image_size=32", "classifier.epochs=1", "classifier.batch_size=6",
                      "classifier.lr=1e-5", "classifier.lr_head=1e-4", "classifier.weight_decay=5e-4")
    info = train_eval_classifier(cfg, tmp_path / "clf", progress=False, device="cpu")
    assert 0.0 <= info["test_acc"] <= 1.0 and info["pretrained"] is False
    loaded = load_classifier(tmp_path / "clf")
    assert isinstance(loaded, ResNetClassifier) and loaded.fc.out_features == 2


def test_classifier_config_validation():
    with pytest.raises(ConfigError, match="resnet34 only"):
        tiny_config("erasediff", "classifier.image_size=224")
    with pytest.raises(ConfigError, match="classifier.arch"):
        tiny_config("erasediff", "classifier.arch=resnet50")
    cfg = tiny_config("erasediff", "classifier.arch=resnet34")
    assert (cfg.classifier.image_size, cfg.classifier.pretrained, cfg.classifier.lr_head) == (None, True, None)
