"""`report`: the paper's tables from results/**/metrics.json, each cell next to the paper's number.

A results folder holds one run directory per method (as the experiment scripts write them:
`<OUT>/<run>/metrics.json` from training, `<OUT>/<run>/eval/metrics.json` from `evaluate`). A layout
names the rows (run directory -> paper row), the columns (metric key -> header) and the paper's
numbers (PAPER.md §6); a cell reads `ours (paper)` where the paper has a number. Rows whose run has
no evaluation yet are listed with "–" so a half-finished table shows what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ErasediffError


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # key of eval/metrics.json, or "train:<key>" for the run's own metrics.json
    fmt: str = "{:.3f}"


@dataclass(frozen=True)
class Layout:
    title: str
    rows: tuple[tuple[str, str], ...]  # (run directory name, row label)
    columns: tuple[Column, ...]
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # row label -> column header -> value
    note: str = ""
    needs_eval: bool = True  # False: the columns come from the runs' own metrics.json (Table 2)


def _fid_cols(classes, prefix: str, key: str) -> tuple[Column, ...]:
    return tuple(Column(f"{prefix} c{c}", f"{key}_class_{c}", "{:.2f}") for c in classes)


_TABLE3_REMAIN = (0, 1, 3, 4, 5, 6, 7, 9)
_T3_ROWS = (("base", "Unscrubbed"), ("retrain", "Retrain"), ("finetune", "Finetune"), ("neggrad", "NegGrad"),
            ("blindspot", "BlindSpot"), ("erasediff", "EraseDiff"))


def _table3_paper() -> dict[str, dict[str, float]]:
    """PAPER.md §6.3 (v2 Table 3): FID bird, FID ship, forget-class rate, FID of c0..c9 without 2 and 8, WD."""
    raw = {
        "Unscrubbed": (19.62, 12.05, None, 17.04, 9.67, 19.88, 14.78, 20.56, 17.16, 11.53, 11.44, None),
        "Retrain": (152.39, 139.62, 0.0135, 17.39, 9.57, 20.05, 14.65, 20.19, 17.85, 11.63, 10.85, 0.0),
        "Finetune": (31.64, 21.22, 0.7001, 20.49, 12.38, 23.47, 17.80, 25.51, 18.23, 14.43, 16.09, 1.3616),
        "NegGrad": (322.67, 229.08, 0.4358, 285.25, 290.57, 338.49, 290.23, 312.44, 339.43, 320.63, 278.03, 1.3533),
        "BlindSpot": (349.60, 335.69, 0.1167, 228.92, 181.88, 288.88, 252.42, 242.16, 278.62, 192.67, 195.27, 1.3670),
        "EraseDiff": (256.27, 294.08, 0.0026, 29.61, 22.10, 28.65, 27.68, 35.59, 23.93, 21.24, 24.85, 1.3534),
    }
    headers = ["FID bird", "FID ship", "forget rate", *(f"FID c{c}" for c in _TABLE3_REMAIN), "WD"]
    return {row: {h: v for h, v in zip(headers, vals) if v is not None} for row, vals in raw.items()}


LAYOUTS: dict[str, Layout] = {
    "table1": Layout(
        title="Table 1: CIFAR10 class-conditional DDPM, forget airplane (45K images for FID, 500 for the judge)",
        rows=(("base", "Unscrubbed"), ("erasediff", "EraseDiff"), ("erasediff_gr", "EraseDiff (D_r = 4.5K GR)"),
              ("selective_amnesia", "SA"), ("finetune", "Finetune"), ("neggrad", "NegGrad"), ("salun", "SalUn"),
              ("blindspot", "BlindSpot"), ("so", "SO")),
        columns=(Column("FID", "fid", "{:.2f}"), Column("Precision", "precision"), Column("Recall", "recall"),
                 Column("Entropy", "entropy_f"), Column("P_psi(y=c_f)", "p_f")),
        paper={
            "Unscrubbed": {"FID": 9.69, "Precision": 0.392, "Recall": 0.787, "Entropy": 0.037, "P_psi(y=c_f)": 0.972},
            "EraseDiff": {"FID": 7.97, "Precision": 0.43, "Recall": 0.740, "Entropy": 2.017, "P_psi(y=c_f)": 0.216},
            "EraseDiff (D_r = 4.5K GR)": {"FID": 11.74, "Precision": 0.379, "Recall": 0.76, "Entropy": 1.59,
                                          "P_psi(y=c_f)": 0.355},
            "SA": {"FID": 9.08, "Precision": 0.412, "Recall": 0.767, "Entropy": 1.47, "P_psi(y=c_f)": 0.156},
            "Finetune": {"FID": 8.21, "Precision": 0.43, "Recall": 0.77, "P_psi(y=c_f)": 0.96},
            "NegGrad": {"FID": 76.73, "Precision": 0.08, "Recall": 0.61, "P_psi(y=c_f)": 0.61},
            "SalUn": {"FID": 9.16, "Precision": 0.41, "Recall": 0.76, "P_psi(y=c_f)": 0.07},
        },
        note="Paper numbers: v2 Table 1 (PAPER.md §6.1; its P/R were computed with the swapped evaluator, "
             "evaluate.quirks reproduces that); Finetune, NegGrad, SalUn from the v4 table (§6.7, UNCONFIRMED).",
    ),
    "table2": Layout(
        title="Table 2: overhead of one training step (CIFAR10, forget airplane; batch 128, one GPU)",
        rows=(("selective_amnesia", "SA"), ("erasediff", "EraseDiff"), ("salun", "SalUn"),
              ("erasediff_gr", "EraseDiff (D_r = 4.5K GR)")),
        columns=(Column("Memory (MiB)", "train:peak_memory_mib.value", "{:.1f}"),
                 Column("Time (s)", "train:sec_per_step", "{:.2f}"), Column("steps", "train:steps", "{:d}"),
                 Column("total (s)", "train:wall_time_s", "{:.0f}")),
        paper={"SA": {"Memory (MiB)": 3352.3, "Time (s)": 9.52}, "EraseDiff": {"Memory (MiB)": 3360.3, "Time (s)": 4.16}},
        note="Paper numbers: v2 Table 2 (PAPER.md §6.2): SA's memory is the maximum over its Fisher and forgetting "
             "stages and its time excludes the Fisher; ours: peak CUDA memory allocated during the run's steps "
             "(on a CPU run: the process's peak RSS) and the mean wall time per outer step. SA's Fisher time is "
             "printed by the `fisher` command.",
        needs_eval=False,
    ),
    "table3": Layout(
        title="Table 3: CIFAR10 conditional DDIM (100 steps), forget bird (2) + ship (8), per-class FID on 5K images",
        rows=_T3_ROWS,
        columns=(Column("FID bird", "fid_class_2", "{:.2f}"), Column("FID ship", "fid_class_8", "{:.2f}"),
                 Column("forget rate", "acc_f", "{:.4f}"), *_fid_cols(_TABLE3_REMAIN, "FID", "fid"),
                 Column("WD", "relative_l2", "{:.4f}")),
        paper=_table3_paper(),
        note="Paper numbers: v2 Table 3 (PAPER.md §6.3). 'forget rate' = share of forgotten-class images the judge "
             "assigns to a forgotten class (the column's label was lost, UNCONFIRMED); WD here = relative L2 to "
             "Retrain (the paper's formula is UNCONFIRMED; eval/metrics.json also has the raw l2).",
    ),
    "digits_table3": Layout(
        title="Digits mini-reproduction of Table 3: forget 2 + 8 (Fréchet distances in the judge's feature space)",
        rows=(*_T3_ROWS, ("selective_amnesia", "SA"), ("salun", "SalUn")),
        columns=(Column("FD 2", "fd_class_2", "{:.1f}"), Column("FD 8", "fd_class_8", "{:.1f}"),
                 Column("p_f", "p_f"), Column("forget rate", "acc_f"), Column("acc remain", "acc_remain"),
                 Column("FD remain", "fd_remain", "{:.1f}"), *_fid_cols(_TABLE3_REMAIN, "FD", "fd"),
                 Column("WD", "relative_l2", "{:.3f}"), Column("train s", "train:wall_time_s", "{:.0f}")),
        note="No paper numbers exist for digits; compare the pattern with the table3 layout (PAPER.md §6.3): "
             "EraseDiff forgets and keeps the remaining classes, NegGrad/BlindSpot damage them, Finetune does not forget.",
    ),
    "digits_forget0": Layout(
        title="Digits, forget digit 0: every method from the same Unscrubbed model, on the same evaluation noise",
        rows=(("base", "Unscrubbed"), ("retrain", "Retrain"), ("erasediff", "EraseDiff"),
              ("erasediff_gr", "EraseDiff (GR D_r)"), ("so", "SO"), ("finetune", "Finetune"), ("neggrad", "NegGrad"),
              ("blindspot", "BlindSpot"), ("selective_amnesia", "SA"), ("salun", "SalUn")),
        columns=(Column("p_f", "p_f"), Column("entropy_f", "entropy_f"), Column("acc_f", "acc_f"),
                 Column("acc remain", "acc_remain"), Column("FD remain", "fd_remain", "{:.1f}"),
                 Column("train s", "train:wall_time_s", "{:.0f}")),
        note="No paper numbers exist for digits.",
    ),
}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _lookup(source: dict[str, Any], key: str) -> Any:
    """source[key], with dots reaching into nested dicts (peak_memory_mib.value); None when absent."""
    for part in key.split("."):
        if not isinstance(source, dict) or part not in source:
            return None
        source = source[part]
    return source


def _cell(value: Any, col: Column, paper: float | None) -> str:
    ours = "–" if value is None else col.fmt.format(value)
    return ours if paper is None else f"{ours} ({col.fmt.format(paper)})"


def render(layout_name: str, results: str | Path) -> str:
    """The markdown table of `layout_name` for the run directories under `results`."""
    if layout_name not in LAYOUTS:
        raise ErasediffError(f"unknown report layout {layout_name!r}; valid layouts: {', '.join(LAYOUTS)}")
    root = Path(results)
    if not root.is_dir():
        raise ErasediffError(f"results folder '{results}' does not exist")
    layout = LAYOUTS[layout_name]
    where = "eval/metrics.json" if layout.needs_eval else "metrics.json"
    found = [run for run, _ in layout.rows if (root / run / where).is_file()]
    if not found:
        raise ErasediffError(f"no {'evaluated ' if layout.needs_eval else ''}run under '{results}': expected "
                             f"<run>/{where} for runs {', '.join(r for r, _ in layout.rows)}"
                             + (" (run `evaluate` first)" if layout.needs_eval else ""))
    lines = [f"### {layout.title}", ""]
    if layout.paper:
        lines += ["Cells: ours (paper).", ""]
    lines.append("| method | " + " | ".join(c.header for c in layout.columns) + " |")
    lines.append("|---" * (len(layout.columns) + 1) + "|")
    for run, label in layout.rows:
        ev = _read(root / run / "eval" / "metrics.json")
        train = _read(root / run / "metrics.json") or {}
        if (ev if layout.needs_eval else train or None) is None and label not in layout.paper:
            continue
        cells = []
        for col in layout.columns:
            source = train if col.key.startswith("train:") else (ev or {})
            cells.append(_cell(_lookup(source, col.key.removeprefix("train:")), col,
                               layout.paper.get(label, {}).get(col.header)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if layout.note:
        lines += ["", layout.note]
    return "\n".join(lines) + "\n"


def write_grid(layout_name: str, results: str | Path, out: Path, per_class: int = 4) -> Path | None:
    """One panel per evaluated row of the layout (left to right in table order), one image row per class:
    the first `per_class` images of every class from each run's eval/samples/ (the same noise for all)."""
    from PIL import Image

    from .evaluate import class_rows, save_rows_png
    from .sampling import read_samples

    folders = [Path(results) / run / "eval" / "samples" for run, _ in LAYOUTS[layout_name].rows]
    folders = [f for f in folders if (f / "manifest.csv").is_file()]
    if not folders:
        return None
    classes = {f: sorted(int(p.name) for p in f.iterdir() if p.is_dir() and p.name.isdigit()) for f in folders}
    # as many images per class as every folder has (at most per_class), so the panels line up
    k = min([per_class] + [len(list((f / str(c)).glob("*.png"))) for f in folders for c in classes[f]])
    panels = []
    for f in folders:
        with Image.open(next(f.glob("*/00000.png"))) as img:
            channels = 1 if img.mode == "L" else 3
        images, labels = read_samples(f, {c: k for c in classes[f]}, channels)
        panels.append(class_rows(images, labels, k))
    return save_rows_png(out, panels, k)


def write_report(layout_name: str, results: str | Path, output: str | Path | None = None) -> tuple[str, Path, Path | None]:
    """Render and write the table (default <results>/<layout>.md, regenerated on every call) and, when
    the runs kept their evaluation samples, the side-by-side grid <table file>.png."""
    text = render(layout_name, results)
    out = Path(output) if output is not None else Path(results) / f"{layout_name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    grid = write_grid(layout_name, results, out.with_suffix(".png"))
    return text, out, grid
