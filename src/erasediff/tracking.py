"""Experiment trackers (TensorBoard, Weights & Biases) and the loss plot of a run.

The training loop's record is `log.jsonl` (one JSON object per logged step). It is complete and needs
nothing installed, but is hard to read while a run goes; so the loop can send the same scalars to the
trackers named in `train.log_with`, and draws `losses.png` from log.jsonl at the end of every run.

- The trackers are accelerate's own classes (`accelerate.tracking`), so their files look like any other
  accelerate run's. Both packages are optional (`pip install 'erasediff[tracking]'`): `check_trackers`
  turns a missing one into a one-line ConfigError before anything runs.
- Only the main process of a launch creates trackers; the others get an object whose calls do nothing.
- A resumed run (resume_step > 0) writes into the same TensorBoard folder. Its first event file starts
  with a SessionLog.START at resume_step + 1 (SummaryWriter's purge_step), which makes TensorBoard drop
  the interrupted part's events from that step on: every step is shown once, with the resumed values.
- wandb runs offline unless the user set WANDB_MODE: a run never needs a network or an account;
  `wandb sync <run_dir>/wandb/offline-run-*` uploads it later.
- The plot reads log.jsonl only, so it also works for a run that was killed: a last line cut short by
  the kill is not JSON and is skipped.

matplotlib, tensorboard and wandb are imported inside the functions that use them: importing this
module costs nothing, and a run without trackers never needs their packages.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from typing_extensions import Self  # typing.Self from Python 3.11

TRACKERS = ("tensorboard", "wandb")
WANDB_PROJECT = "erasediff"  # every run is one wandb run of this project, named by its run name


def check_trackers(log_with: Sequence[str]) -> None:
    """Refuse (ConfigError, one line) an unknown tracker name or one whose package is not installed.

    Runs before the run folder is made, so that a typo or a missing package costs nothing; it only
    looks the packages up (importlib.util.find_spec) and builds nothing.
    """
    if isinstance(log_with, str):  # a bare string would be read letter by letter
        raise ConfigError(f"train.log_with must be a list of tracker names (valid: {', '.join(TRACKERS)}), "
                          f"got the string {log_with!r}")
    for name in log_with:
        if name not in TRACKERS:
            raise ConfigError(f"train.log_with: unknown tracker {name!r}; valid choices: {', '.join(TRACKERS)} "
                              "(an empty list logs to none)")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.log_with {name!r} needs the {name} package: pip install 'erasediff[tracking]'")


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The nested run config as one level of "a.b.c" keys with bool / int / float / str values.

    TensorBoard's hparams accept only scalars (torch refuses lists, drops None); lists, None, paths
    and anything else become their str() so every key of the config is shown.
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class Trackers:
    """The run's experiment trackers, created on the main process only, through accelerate's tracker
    classes (accelerate.tracking.TensorBoardTracker / WandBTracker).

    tensorboard: event files in run_dir / "tensorboard" (accelerate adds its hparams.yml and torch the
    hparams summary in time-stamped subfolders). wandb: offline unless WANDB_MODE is set, files in
    run_dir / "wandb" (wandb.init(dir=run_dir) makes that subfolder), project "erasediff", run name
    `run_name`. Both store `config` (the resolved run config, nested) as hyperparameters.
    Use as a context manager, or call close(); close() is safe to call twice.
    """

    def __init__(self, log_with: Sequence[str], run_dir: Path, run_name: str, config: Mapping[str, Any],
                 resume_step: int = 0):
        check_trackers(log_with)
        self._trackers: list[Any] = []  # started accelerate GeneralTracker objects
        if not log_with:
            return
        from accelerate import PartialState
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        # accelerate's trackers log through accelerate.logging, which raises unless PartialState exists; made
        # here (on every process) when the caller did not make it. In one process it starts no process group.
        if not PartialState().is_main_process:
            return

        run_dir = Path(run_dir)
        try:
            for name in dict.fromkeys(log_with):  # each tracker once, in the given order
                if name == "tensorboard":
                    # TensorBoardTracker forwards **kwargs to SummaryWriter and writes to logging_dir/run_name;
                    # purge_step: the reader drops earlier events with step >= resume_step + 1
                    kwargs = {"purge_step": resume_step + 1} if resume_step > 0 else {}
                    tracker = TensorBoardTracker("tensorboard", run_dir, **kwargs)
                    values: Mapping[str, Any] = flat_config(config)
                else:
                    os.environ.setdefault("WANDB_MODE", "offline")
                    tracker = WandBTracker(WANDB_PROJECT, name=run_name, dir=str(run_dir))
                    values = dict(config)  # wandb keeps nested config as it is
                tracker.start()
                self._trackers.append(tracker)
                tracker.store_init_configuration(values)
        except BaseException:
            self.close()  # a tracker that started before the failure still gets closed
            raise

    @property
    def names(self) -> list[str]:
        """The trackers this process writes to ([] on the other processes of a launch)."""
        return [t.name for t in self._trackers]

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Send one logged step's scalars to every tracker (the same keys and values as log.jsonl)."""
        if not self._trackers:
            return
        # float(): accelerate's TensorBoardTracker silently skips values that are not int / float / str / dict
        # (a numpy float32 is none of them)
        values = {k: float(v) for k, v in scalars.items()}
        for tracker in self._trackers:
            tracker.log(values, step=int(step))

    def close(self) -> None:
        """Flush and close every tracker; each is closed even when another fails. Safe to call twice."""
        trackers, self._trackers = self._trackers, []
        errors: list[Exception] = []
        for tracker in trackers:
            try:
                tracker.finish()
            except Exception as exc:  # noqa: BLE001 - the others still get closed; the first error is raised after
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_log(log_path: Path) -> list[dict[str, Any]]:
    """The records of a log.jsonl, in file order; a missing file has none.

    A line that is not a JSON object with a numeric "step" (a line cut short by a kill) is skipped.
    """
    path = Path(log_path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and math.isfinite(_number(record.get("step"))):
            records.append(record)
    return records


def _is_scalar(value: Any) -> bool:
    # a number, or null: how log.jsonl writes a non-finite one (files.finite_or_none)
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _number(value: Any) -> float:
    # a logged value as a float; null and non-numbers -> NaN (not drawn)
    return float(value) if value is not None and _is_scalar(value) else math.nan


def loss_panels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys that get a panel, in first-seen order: every key with a number (or null) value, except
    "step" (the x axis) and "skipped" (drawn as red marks in every panel instead)."""
    keys: dict[str, None] = {}  # an ordered set
    for record in records:
        for key, value in record.items():
            if key not in ("step", "skipped") and _is_scalar(value):
                keys.setdefault(key)
    return list(keys)


def loss_figure(records: Sequence[Mapping[str, Any]]) -> Figure:
    """One small panel per key of `loss_panels`, the value against the step, titled with the key.

    Steps whose record has a true "skipped" are red vertical lines. A panel whose finite values are all
    positive and span more than 2 decades (max / min > 100) has a log y axis. The figure is a plain
    matplotlib Figure on an Agg canvas: pyplot's global state is never touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = loss_panels(records)
    steps = [_number(r["step"]) for r in records]  # (n,) x of every panel
    skipped = [s for s, r in zip(steps, records) if _number(r.get("skipped", 0)) > 0]
    ncols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig = Figure(figsize=(4.0 * ncols, 2.6 * nrows), layout="constrained")  # inches
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ys = [_number(r.get(key)) for r in records]  # (n,) NaN where the key is absent
        xy = [(x, y) for x, y in zip(steps, ys) if math.isfinite(y)]
        ax.plot([x for x, _ in xy], [y for _, y in xy], lw=1.0, marker="." if len(xy) < 50 else None)
        if skipped:
            ax.vlines(skipped, 0, 1, transform=ax.get_xaxis_transform(), colors="red", alpha=0.35, lw=0.8)
        finite = [y for _, y in xy]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return fig


def plot_losses(log_path: Path, out_png: Path) -> Path | None:
    """Draw every logged scalar of log.jsonl against the step (see loss_figure) into `out_png`.

    Returns out_png, or None (and writes nothing) when the log is missing or has no complete line with
    a scalar. The PNG is written to a temporary sibling and renamed over out_png (files.atomic_write_bytes),
    so a kill while drawing never leaves half an image.
    """
    records = read_log(log_path)
    if not loss_panels(records):
        return None
    buffer = io.BytesIO()
    loss_figure(records).savefig(buffer, format="png", dpi=100)
    out = Path(out_png)
    atomic_write_bytes(out, buffer.getvalue())
    return out
