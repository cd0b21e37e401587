"""`bench`: per-step time and peak memory of several methods on the same model and batches (docs/architecture.md
"Speed, memory and scale"; the paper's Table 2), as ratios to Finetune measured in the same invocation.

Each config is prepared exactly as `unlearn` would (same model, data split and seed, so the same batches)
and runs `warmup` untimed then `steps` timed outer steps of its method; nothing is written to a run
directory. Every config runs in its own spawned process, so one method's peak memory never includes
another's:
- CUDA: torch.cuda.max_memory_allocated over the timed steps (weights, optimiser state, activations);
- CPU: the process's peak resident set size (setup included: an upper bound, coarse on small models).
Times are wall-clock seconds per outer step, CUDA-synchronised, including the batch draw as in the loop.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import ErasediffError
from .experiment import load_config
from .tables import markdown_table


def _bench_one(config: str, overrides: list[str], warmup: int, steps: int) -> dict[str, Any]:
    """Run in a fresh process: prepare `config` and time `steps` outer steps after `warmup` ones."""
    import torch

    from .build import build_run
    from .run import peak_memory_mib

    cfg = load_config(config, overrides)
    run = build_run(cfg, progress=False)
    s, device = run.state, run.state.backbone.device
    s.model.train()
    for _ in range(warmup):
        run.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    return {
        "config": config,
        "method": cfg.method.name,
        "device": str(device),
        "trainable_params": sum(p.numel() for p in s.params),
        "sec_per_step": wall / steps,
        "peak_memory_mib": peak_memory_mib(device),
    }


def split_overrides(configs: list[str], overrides: list[str]) -> list[list[str]]:
    """The overrides of each config: plain `KEY=VALUE` for all, `STEM:KEY=VALUE` for the config named STEM.

    e.g. `selective_amnesia:method.fisher=F.safetensors` reaches only selective_amnesia.yaml, whose
    method section is the only one with that key.
    """
    stems = [Path(c).stem for c in configs]
    per_config: list[list[str]] = [[] for _ in configs]
    for item in overrides:
        key = item.split("=", 1)[0]
        if ":" not in key:
            for lst in per_config:
                lst.append(item)
            continue
        stem, rest = item.split(":", 1)
        if stem not in stems:
            raise ErasediffError(f"--set {item}: no config named '{stem}'; valid prefixes: {', '.join(stems)}")
        for lst, name in zip(per_config, stems):
            if name == stem:
                lst.append(rest)
    return per_config


def _reference_row(rows: list[dict[str, Any]]) -> int:
    """Index of the Finetune row (the ratios' denominator), else the first row."""
    return next((i for i, r in enumerate(rows) if r["method"] == "finetune"), 0)


def bench_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per config, time and memory with their ratios to the reference row."""
    ref = rows[_reference_row(rows)]
    label = Path(ref["config"]).stem
    ref_mem = ref["peak_memory_mib"]["value"]
    cells = [[Path(r["config"]).stem, r["method"], f"{r['sec_per_step']:.4f}",
              f"{r['sec_per_step'] / ref['sec_per_step']:.2f}", f"{r['peak_memory_mib']['value']:.1f}",
              f"{r['peak_memory_mib']['value'] / ref_mem:.2f}", r["peak_memory_mib"]["kind"]] for r in rows]
    header = ["config", "method", "s/step", f"× {label}", "peak MiB", f"× {label}", "memory kind"]
    return markdown_table(header, cells) + "\n"


def run_bench(
    configs: list[str], overrides: list[str], *, warmup: int = 3, steps: int = 10, output_dir: str | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], str]:
    """Bench every config (one spawned process each); returns the rows and the markdown table.

    Every config is loaded before the first process starts, so a bad key or file fails at once; with
    `output_dir`, bench.json and bench.md are written there and never overwritten.
    """
    if not configs:
        raise ErasediffError("bench needs at least one --config")
    if steps < 1 or warmup < 0:
        raise ErasediffError(f"--steps must be >= 1 and --warmup >= 0 (got {steps}, {warmup})")
    per_config = split_overrides(configs, overrides)
    for config, own in zip(configs, per_config):
        load_config(config, own)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        for name in ("bench.json", "bench.md"):
            if (out / name).exists():
                raise ErasediffError(f"{out / name} already exists (results are never overwritten): choose another "
                                     "--output-dir")
    ctx = multiprocessing.get_context("spawn")  # a fresh process: its peak memory is this method's alone
    rows = []
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for config, own in tqdm(list(zip(configs, per_config)), desc="bench", unit="config", disable=not progress):
            rows.append(pool.apply(_bench_one, (config, own, warmup, steps)))
    table = bench_table(rows)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"warmup": warmup, "steps": steps, "overrides": overrides, "rows": rows}
        (out / "bench.json").write_text(json.dumps(payload, indent=2) + "\n")
        (out / "bench.md").write_text(table)
    return rows, table
