"""Trackers and the loss plot: what TensorBoard shows is read back from the event files with
TensorBoard's own reader, and the plot's panels are checked on the figure that is drawn."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from erasediff.errors import ConfigError
from erasediff.tracking import (
    TRACKERS,
    Trackers,
    check_trackers,
    flat_config,
    loss_figure,
    loss_panels,
    plot_losses,
    read_log,
)

CONFIG = {"method": "erasediff", "train": {"lr": 1e-4, "steps": 6, "log_with": ["tensorboard"], "ckpt": None}}


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (its reader applies the purge of a restart)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def next_second():
    # event file names start with the wall-clock second, then pid and an in-process counter; a resumed
    # run is a later process, but in one test process two files of the same second could sort out of order
    time.sleep(1.02 - time.time() % 1)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    # Trackers makes accelerate's process-wide PartialState; later tests of this worker make their own
    from accelerate import PartialState

    yield
    PartialState._reset_state()


def test_tensorboard_scalars_read_back(tmp_path):
    with Trackers(["tensorboard"], tmp_path, "run", CONFIG) as trackers:
        assert trackers.names == ["tensorboard"]
        for step in (10, 20, 30):
            # a numpy float32 too: accelerate's tracker would drop it silently without the float() in log()
            trackers.log({"loss_r": 1.0 / step, "phi": np.float32(step / 7)}, step=step)
    scalars = read_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"loss_r", "phi"}
    assert [s for s, _ in scalars["loss_r"]] == [10, 20, 30]
    np.testing.assert_allclose([v for _, v in scalars["loss_r"]], [0.1, 0.05, 1 / 30], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["phi"]], [10 / 7, 20 / 7, 30 / 7], rtol=1e-6)


def test_tensorboard_stores_the_flattened_config(tmp_path):
    import yaml

    Trackers(["tensorboard"], tmp_path, "run", CONFIG).close()
    (saved,) = (tmp_path / "tensorboard").glob("*/hparams.yml")  # accelerate's copy of the hparams
    assert yaml.safe_load(saved.read_text()) == {
        "method": "erasediff", "train.lr": 1e-4, "train.steps": 6, "train.log_with": "['tensorboard']",
        "train.ckpt": "None"}
    assert flat_config({"a": {"b": {"c": 1}}, "d": (1, 2)}) == {"a.b.c": 1, "d": "(1, 2)"}


def test_resume_shows_every_step_once_with_the_new_values(tmp_path):
    with Trackers(["tensorboard"], tmp_path, "run", CONFIG) as trackers:
        for step in range(1, 7):
            trackers.log({"loss_r": float(step), "lr": 0.5}, step=step)
    next_second()
    with Trackers(["tensorboard"], tmp_path, "run", CONFIG, resume_step=3) as trackers:
        for step in range(4, 7):
            trackers.log({"loss_r": 100.0 + step, "lr": 0.25}, step=step)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["loss_r"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0), (6, 106.0)]
    assert scalars["lr"] == [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.25), (5, 0.25), (6, 0.25)]


def test_only_the_main_process_writes_and_close_twice_is_fine(tmp_path, monkeypatch):
    from accelerate import PartialState

    # another process of a torchrun / accelerate launch
    monkeypatch.setattr(PartialState, "is_main_process", property(lambda self: False))
    trackers = Trackers(["tensorboard"], tmp_path, "run", CONFIG)
    trackers.log({"loss_r": 1.0}, step=1)
    trackers.close()
    trackers.close()
    assert trackers.names == [] and not (tmp_path / "tensorboard").exists()
    assert Trackers([], tmp_path, "run", CONFIG).names == []


def test_check_trackers_refuses_unknown_names_and_missing_packages(tmp_path, monkeypatch):
    check_trackers([])
    check_trackers(["tensorboard"])
    with pytest.raises(ConfigError, match="valid choices: tensorboard, wandb") as err:
        Trackers(["tensorbord"], tmp_path, "run", CONFIG)
    assert "\n" not in str(err.value) and not (tmp_path / "tensorboard").exists()
    with pytest.raises(ConfigError, match="must be a list"):
        check_trackers("tensorboard")

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        check_trackers(["tensorboard", "wandb"])
    assert str(err.value) == "train.log_with 'wandb' needs the wandb package: pip install 'erasediff[tracking]'"
    assert TRACKERS == ("tensorboard", "wandb")


def test_module_imports_without_the_optional_packages():
    # None in sys.modules makes `import x` raise ImportError, as if the package were not installed
    code = ("import sys\nfor m in ('matplotlib', 'tensorboard', 'wandb', 'accelerate'): sys.modules[m] = None\n"
            "import erasediff.tracking")
    subprocess.run([sys.executable, "-c", code], check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_wandb_offline_run_writes_under_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset")
    monkeypatch.delenv("WANDB_MODE")  # undone after the test: Trackers' setdefault does not leak
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    with Trackers(["wandb"], tmp_path, "my-run", CONFIG) as trackers:
        trackers.log({"loss_r": 0.5}, step=1)
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def write_log(path: Path, n: int = 30) -> None:
    lines = []
    for step in range(1, n + 1):
        record = {"step": step * 10, "lr": 1e-4, "loss_r": 0.1 + 0.01 * step, "loss_f": 10.0 ** (-step / 8),
                  "q": 0.01, "lambda": 0.1, "grad_norm": 1.3, "phi": 0.8}
        if step == 12:
            record["skipped"] = 1.0
        lines.append(json.dumps(record))
    lines.append('{"step": 310, "lr": 1e-4, "tail": 0.')  # cut short by a kill
    path.write_text("\n".join(lines))


def test_plot_losses_one_panel_per_key(tmp_path):
    from PIL import Image

    log = tmp_path / "log.jsonl"
    write_log(log)
    records = read_log(log)
    assert len(records) == 30  # the truncated line is not one
    keys = ["lr", "loss_r", "loss_f", "q", "lambda", "grad_norm", "phi"]
    assert loss_panels(records) == keys  # "tail" only occurs on the cut line; "skipped" is a mark, not a panel
    fig = loss_figure(records)
    assert [ax.get_title() for ax in fig.axes] == keys
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes}
    assert scales["loss_f"] == "log" and scales["loss_r"] == "linear" and scales["lr"] == "linear"
    for ax in fig.axes:  # the skipped step (120) is marked in every panel
        (marks,) = ax.collections
        assert [seg[0][0] for seg in marks.get_segments()] == [120.0]
        assert list(ax.lines[0].get_xdata()) == [10.0 * s for s in range(1, 31)]

    out = plot_losses(log, tmp_path / "losses.png")
    assert out == tmp_path / "losses.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1200, 780)  # 3 x 3 panels of 4 x 2.6 in at 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "losses.png"]  # no temporary left


def test_plot_losses_of_an_empty_log_writes_nothing(tmp_path):
    for text in ("", '{"step": 1, "loss_r": 0.'):
        (tmp_path / "log.jsonl").write_text(text)
        assert plot_losses(tmp_path / "log.jsonl", tmp_path / "losses.png") is None
    assert plot_losses(tmp_path / "missing.jsonl", tmp_path / "losses.png") is None
    assert not (tmp_path / "losses.png").exists()
