"""`bench`: per-step time and peak memory of several methods on the same model and batches (docs/architecture.md
"Speed, memory and scale"; the paper's Table 2), as ratios to Finetune measured in the same invocation.

Each config is prepared exactly as `unlearn` would (same model, data split and seed, so the same batches)
and runs `warmup` untimed then `steps` timed outer steps of its method; nothing is written to a run
directory. Every config runs in its own spawned process, so one method's peak memory never includes
another's:
- CUDA: torch.cuda.max_memory_allocated over the timed steps (weights, optimiser state, activations);
- CPU: the process's peak resident set size (setup included: an upper bound, coarse on small models).
Times are wall-clock seconds per outer step, CUDA-synchronised, including the batch draw as in the loop.

The compute floor of a step (the official-structure overhead question, docs/speed.md "Compute floor"):
forward hooks count the network rows each step passes through with gradients (n_fb, in batches of
data.batch_size) and without (n_f: targets, frozen or proxy networks, ESD's trajectory); the floor is
n_fb × (Finetune's s/step) + n_f × (one no-grad forward of a batch, timed in the same process), and
`× floor` = s/step / floor. Finetune itself is one fwd+bwd by definition (× floor = 1).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .device import resolve_device
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
    rows = {"fb": 0, "f": 0}  # network rows (samples) through a forward with / without gradients

    def count(module, args) -> None:
        rows["fb" if torch.is_grad_enabled() else "f"] += int(args[0].shape[0])

    networks = [s.model, *(m for m in vars(run.method).values() if isinstance(m, torch.nn.Module) and m is not s.model)]
    hooks = [m.register_forward_pre_hook(count) for m in networks]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    batch = cfg.data.batch_size
    return {
        "config": config,
        "method": cfg.method.name,
        "device": str(device),
        "trainable_params": sum(p.numel() for p in s.params),
        "sec_per_step": wall / steps,
        "peak_memory_mib": peak_memory_mib(device),
        "fwd_bwd_per_step": rows["fb"] / batch / steps,  # in batches of data.batch_size
        "fwd_per_step": rows["f"] / batch / steps,
        "sec_per_forward": _forward_time(run, batch),
    }


def _forward_time(run, batch: int, repeats: int = 3) -> float:
    """Seconds of one no-grad forward of `batch` rows through the run's network (the floor's unit)."""
    import torch

    s = run.state
    bb, device = s.backbone, s.backbone.device
    x = torch.randn((batch, *bb.sample_shape), device=device)
    t = torch.randint(0, bb.num_timesteps, (batch,), device=device)
    cond = bb.null_condition(batch)
    with torch.no_grad(), s.autocast():
        bb.predict(s.model, x, t, cond)  # warm-up (allocations, compilation)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            bb.predict(s.model, x, t, cond)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / repeats


def _sample_one(config: str, overrides: list[str], images: int, warmup: int) -> dict[str, Any]:
    """Run in a fresh process: sampling throughput of `config`'s model with its `sample` section (sampler,
    steps, guidance, batch size, precision; model.compile and the other speed options apply): `warmup`
    untimed batches, then `images` images of class 0, in images per second."""
    import torch

    from .prepare import prepare_model
    from .run import peak_memory_mib
    from .samplers import sample_classes

    cfg = load_config(config, overrides)
    parts = prepare_model(cfg, resolve_device(cfg.device))
    bb, device = parts.backbone, parts.backbone.device
    parts.model.eval()
    if warmup:
        sample_classes(bb, parts.model, [0], warmup * cfg.sample.batch_size, bb.sample_shape, cfg.sample, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    sample_classes(bb, parts.model, [0], images, bb.sample_shape, cfg.sample, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    s = cfg.sample
    return {
        "config": config,
        "device": str(device),
        "images": images,
        "images_per_s": images / wall,
        "peak_memory_mib": peak_memory_mib(device),
        "sampler": f"{s.sampler.upper()} {s.steps} steps, guidance {s.guidance}, batch {s.batch_size}",
        "mixed_precision": s.mixed_precision,
        "compile": cfg.model.compile,
    }


def sample_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per sampling config, images per second and peak memory."""
    cells = [[Path(r["config"]).stem, r["sampler"], r["mixed_precision"], "yes" if r["compile"] else "no",
              f"{r['images_per_s']:.2f}", f"{r['peak_memory_mib']['value']:.1f}", r["peak_memory_mib"]["kind"]]
             for r in rows]
    return markdown_table(["config", "sampler", "precision", "compiled", "images/s", "peak MiB", "memory kind"],
                          cells) + "\n"


def _child(conn, fn, args) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # handed to the parent, which raises it there
        conn.send(("error", f"{type(exc).__name__}: {exc}", isinstance(exc, ErasediffError)))
    finally:
        conn.close()


def _in_fresh_process(fn, args: tuple) -> dict[str, Any]:
    """fn(*args) in a new spawned process (its peak memory is this config's alone). Not a Pool worker: a
    pool's daemonic workers may not start the DataLoader workers of a folder or CIFAR10 dataset."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:  # it died without a word (killed, out of memory)
        proc.join()
        result = ("error", f"the bench process died (exit code {proc.exitcode})", False)
    proc.join()
    if result[0] == "error":
        raise (ErasediffError if result[2] else RuntimeError)(f"bench of {args[0]}: {result[1]}")
    return result[1]


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
              f"{r['peak_memory_mib']['value'] / ref_mem:.2f}", r["peak_memory_mib"]["kind"],
              f"{r['fwd_bwd_per_step']:.2f} + {r['fwd_per_step']:.2f}",
              f"{floor_ratio(r, ref):.2f}" if ref["method"] == "finetune" else "–"] for r in rows]
    header = ["config", "method", "s/step", f"× {label}", "peak MiB", f"× {label}", "memory kind",
              "fwd+bwd + fwd / step", "× floor"]
    return markdown_table(header, cells) + "\n"


def floor_ratio(row: dict[str, Any], finetune: dict[str, Any]) -> float:
    """s/step over the compute floor n_fb × Finetune's s/step + n_f × one no-grad forward (module docstring)."""
    floor = row["fwd_bwd_per_step"] * finetune["sec_per_step"] + row["fwd_per_step"] * row["sec_per_forward"]
    return row["sec_per_step"] / floor if floor > 0 else float("nan")


def run_bench(
    configs: list[str], overrides: list[str], *, warmup: int = 3, steps: int = 10, output_dir: str | None = None,
    progress: bool = True, sample_images: int = 0,
) -> tuple[list[dict[str, Any]], str]:
    """Bench every config (one spawned process each); returns the rows and the markdown table.

    sample_images > 0 measures sampling instead of training: that many images per config after `warmup`
    untimed batches (`_sample_one`). Every config is loaded before the first process starts, so a bad key
    or file fails at once; with `output_dir`, bench.json and bench.md are written there and never overwritten.
    """
    if not configs:
        raise ErasediffError("bench needs at least one --config")
    if steps < 1 or warmup < 0 or sample_images < 0:
        raise ErasediffError(f"--steps must be >= 1, --warmup and --sample-images >= 0 (got {steps}, {warmup}, "
                             f"{sample_images})")
    per_config = split_overrides(configs, overrides)
    for config, own in zip(configs, per_config):
        load_config(config, own)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        for name in ("bench.json", "bench.md"):
            if (out / name).exists():
                raise ErasediffError(f"{out / name} already exists (results are never overwritten): choose another "
                                     "--output-dir")
    rows = []
    for config, own in tqdm(list(zip(configs, per_config)), desc="bench", unit="config", disable=not progress):
        if sample_images:
            rows.append(_in_fresh_process(_sample_one, (config, own, sample_images, warmup)))
        else:
            rows.append(_in_fresh_process(_bench_one, (config, own, warmup, steps)))
    table = sample_table(rows) if sample_images else bench_table(rows)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"warmup": warmup, "steps": steps, "sample_images": sample_images, "overrides": overrides,
                   "rows": rows}
        (out / "bench.json").write_text(json.dumps(payload, indent=2) + "\n")
        (out / "bench.md").write_text(table)
    return rows, table
