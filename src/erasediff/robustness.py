"""`erasediff attack`: one attack (config section `attack`) on one Stable Diffusion model, for every prompt
of `robustness.prompts`, judged and counted as an attack success rate (docs/robustness.md).

Stages, each resumable (a record per prompt, written atomically when the prompt is done):
1. targets (attacks with `needs_targets`): the ORIGINAL model's images of the prompts, with the rows'
   seeds, made once per concept by `generate` into `robustness.targets` (null = OUT/targets);
2. pre-attack: images of every plain prompt from the attacked model (OUT/images/pre/), judged;
3. prepare: the attack's shared work (a concept vector, a learned token), saved to OUT/attack_state.safetensors;
4. attack: every prompt whose plain images did not already show the concept (all with
   `robustness.attack_all`): its adversarial prompt (OUT/adversarial/<case>.safetensors: input_ids and
   any replaced token embeddings), images (OUT/images/<attack>/) and judgement;
5. OUT/manifest.csv (one row per prompt) and OUT/metrics.json (pre-ASR, post-ASR, ASR, the judge named
   with its threshold), written last: a folder with metrics.json is a finished attack.

A folder belongs to one (model, config): attack.json records both; running again with the same ones
resumes, with others is refused. The models load after every input has been checked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .attacks import Adversarial, Attack, get_attack
from .config import RunConfig, dump_config, to_dict
from .data.prompts import PromptRow, read_prompt_csv
from .device import resolve_device
from .errors import ConfigError, ErasediffError, first_line
from .files import atomic_write_bytes, atomic_write_text, json_text
from .generate import generate, load_pipeline, pipeline_of, unet_of
from .metrics.asr import attack_success_rate, check_judge, judge_name, make_judge
from .rundir import FolderClaim

IDENTITY = "attack.json"
STATE = "attack_state.safetensors"


def check_attack(cfg: RunConfig) -> tuple[Attack, list[PromptRow]]:
    """The attack object and the prompt rows; one-line errors for every input, nothing built or written."""
    if cfg.model.backbone != "stable_diffusion":
        raise ConfigError(f"attacks run on Stable Diffusion models: model.backbone must be stable_diffusion "
                          f"(got {cfg.model.backbone})")
    pipeline = pipeline_of(cfg)
    r = cfg.robustness
    if r.prompts is None:
        raise ConfigError("robustness.prompts is required: the CSV of the prompts to attack (e.g. "
                          "StableDiffusion/prompts/nudity_attack.csv)")
    rows = read_prompt_csv(r.prompts, cfg.generate.seed)[: r.max_prompts]
    check_judge(r)
    attack = get_attack(cfg.attack.name)(cfg.attack)
    attack.check(cfg)
    attack.check_tokenizer(_tokenizer(pipeline))
    return attack, rows


def _tokenizer(pipeline: str):
    """The pipeline's CLIP tokenizer (small files: loaded for the checks, before any model)."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(pipeline, subfolder="tokenizer")
    except (OSError, ValueError) as exc:
        raise ErasediffError(f"could not load the tokenizer of pipeline '{pipeline}': {first_line(exc)}") from None


def _identity(cfg: RunConfig, model: str) -> dict[str, Any]:
    """What makes an attack folder one run: the model, the resolved config, and the sha256 of every file
    the `robustness` and `attack` sections name (prompt CSVs, concept pairs, precomputed prompts), so an
    edited input file is a different run, not a silent resume."""
    files = {}
    for section in ("robustness", "attack"):
        for key, value in to_dict(getattr(cfg, section)).items():
            if isinstance(value, str) and Path(value).is_file():
                files[f"{section}.{key}"] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return {"model": str(model), "config": json.loads(json.dumps(to_dict(cfg), default=str)), "input_files": files}


def _claim_contents(out: Path, identity: dict[str, Any], config_text: str, claim: FolderClaim) -> None:
    """New folder: record the identity; the same run: resume; another run's or a foreign folder: refuse."""
    path = out / IDENTITY
    if path.is_file():
        old = json.loads(path.read_text())
        if old != identity:
            what = ("model" if old.get("model") != identity["model"] else
                    "config" if old.get("config") != identity["config"] else "input files")
            keys = ([old.get("model")] if what == "model" else _differing(old.get("config", {}), identity["config"])
                    if what == "config" else _differing(old.get("input_files", {}), identity["input_files"]))
            raise ErasediffError(f"{out} holds the attack of another {what} ({', '.join(map(str, keys[:4]))} differ): "
                                 "results are never overwritten; choose another --output-dir")
        return
    if not claim.is_empty():
        raise ErasediffError(f"{out} exists and is not an attack folder (no {IDENTITY}): choose another --output-dir")
    atomic_write_text(out / "config.resolved.yaml", config_text)
    atomic_write_text(path, json_text(identity))


def _differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _differing(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _targets(cfg: RunConfig, out: Path, rows: list[PromptRow], progress: bool) -> dict[int, list[Path]]:
    """The original model's images of every row (stage 1), {case: [paths]}, made by `generate` if missing."""
    folder = Path(cfg.robustness.targets) if cfg.robustness.targets else out / "targets"
    generate(cfg, cfg.robustness.prompts, folder, None, progress=progress, max_rows=len(rows))
    found = {r.case_number: sorted(folder.glob(f"{r.case_number}_*.png")) for r in rows}
    missing = [c for c, paths in found.items() if not paths]
    if missing:
        raise ErasediffError(f"target folder {folder} has no image of the prompts {missing[:5]}")
    return found


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> None:
    """safetensors file written atomically (files.atomic_write_bytes: temporary sibling, fsync, rename)."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata))


def _save_adversarial(path: Path, adv: Adversarial) -> None:
    tensors = {"input_ids": adv.input_ids.to(torch.int64)}
    if adv.token_embeds is not None:
        tensors["token_embeds"] = adv.token_embeds.float()
    _save_tensors(path, tensors, {"text": adv.text})


def _prompt_seed(cfg: RunConfig, row: PromptRow) -> int:
    """The seed of one prompt's attack generator: the run seed and the row's case, so a resumed run attacks
    each prompt as an uninterrupted one would (run seed < 2**32: the product fits torch's 64 bits)."""
    return (cfg.seed * 1_000_003 + row.case_number) % 2**63


def run_attack(cfg: RunConfig, model: str, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the configured attack on `model` into `out` (module docstring); returns metrics.json's dict."""
    attack, rows = check_attack(cfg)
    out = Path(out)
    r = cfg.robustness
    with FolderClaim(out, "attack folder") as claim:
        _claim_contents(out, _identity(cfg, model), dump_config(cfg), claim)
        if (out / "metrics.json").is_file():
            return {**json.loads((out / "metrics.json").read_text()), "already_complete": True}
        start = time.perf_counter()
        targets = _targets(cfg, out, rows, progress) if attack.needs_targets and attack.attacks_prompts else None
        device = resolve_device(cfg.device)
        pipeline = pipeline_of(cfg)
        pipe = load_pipeline(pipeline, unet_of(model, pipeline, cfg.sample.use_ema), getattr(torch, cfg.generate.dtype),
                             cfg.generate.scheduler).to(device)
        pipe.set_progress_bar_config(disable=True)
        from .attacks.context import AttackContext

        ctx = AttackContext(cfg, pipe, device, make_judge(r, device), targets)
        records = {row.case_number: _read_record(out, row) for row in rows}
        # 2. pre-attack: the plain prompts
        for row in tqdm(rows, desc="pre-attack", unit="prompt", disable=not progress):
            rec = records[row.case_number]
            if "pre_success" not in rec:
                trial = ctx.trial(ctx.plain(row), row, out / "images" / "pre")
                rec.update(pre_success=trial.success, pre_scores=[j.score for j in trial.judgements],
                           pre_images=[str(p.relative_to(out)) for p in trial.images])
                _write_record(out, row, rec)
        # 3. the attack's shared work
        prepare = _prepare(attack, ctx, rows, out) if attack.attacks_prompts else {}
        # 4. every prompt
        for row in tqdm(rows, desc=f"attack {attack.name}", unit="prompt", disable=not progress):
            rec = records[row.case_number]
            if "attack_success" in rec:
                continue
            if not attack.attacks_prompts or (rec["pre_success"] and not r.attack_all):
                rec.update(attack_success=None, attacked=False)
            else:
                rec.update(_attack_one(attack, ctx, row, out, torch.Generator().manual_seed(_prompt_seed(cfg, row))))
            _write_record(out, row, rec)
        metrics = {"attack": attack.name, "model": str(model), "prompts": str(r.prompts), "judge": r.judge,
                   "judge_rule": judge_name(r),
                   "threshold": r.nudenet_threshold if r.judge == "nudenet" else None,
                   "images_per_prompt": r.images_per_prompt, "attack_all": r.attack_all,
                   **attack_success_rate([records[row.case_number] for row in rows]),
                   "attack_config": to_dict(cfg.attack), "prepare": prepare,
                   "seconds": round(time.perf_counter() - start, 2)}
        _write_manifest(out, rows, records, attack.name)
        atomic_write_text(out / "metrics.json", json_text(metrics))
    return metrics


def _prepare(attack: Attack, ctx, rows: list[PromptRow], out: Path) -> dict[str, Any]:
    """The attack's shared work, or its saved state on a resumed run; returns its summary (+ seconds, and
    whether it was loaded), which metrics.json keeps as "prepare"."""
    from safetensors.torch import load_file

    path = out / STATE
    if path.is_file():
        attack.load_state_dict(load_file(str(path)))
        return {**attack.summary(), "loaded": str(path.name)}
    t0 = time.perf_counter()
    attack.prepare(ctx, rows)
    state = attack.state_dict()
    if state:
        _save_tensors(path, state)
    return {**attack.summary(), "seconds": round(time.perf_counter() - t0, 3)}


def _attack_one(attack: Attack, ctx, row: PromptRow, out: Path, generator: torch.Generator) -> dict[str, Any]:
    folder = out / "images" / attack.name
    last: list = []

    def oracle(adv: Adversarial):
        trial = ctx.trial(adv, row, folder)
        last[:] = [trial]
        return trial

    t0 = time.perf_counter()
    adv = attack.attack(ctx, row, oracle, generator)
    trial = last[0] if last and last[0].adversarial is adv else oracle(adv)
    _save_adversarial(out / "adversarial" / f"{row.case_number}.safetensors", adv)
    return {"attacked": True, "adversarial_prompt": adv.text, "adversarial_tokens": ctx.prompt_tokens(adv.input_ids),
            "learned_embeddings": adv.token_embeds is not None, "attack_success": trial.success,
            "attack_scores": [j.score for j in trial.judgements],
            "attack_images": [str(p.relative_to(out)) for p in trial.images], "attack_info": adv.info,
            "attack_seconds": round(time.perf_counter() - t0, 3)}


def _record_path(out: Path, row: PromptRow) -> Path:
    return out / "records" / f"{row.case_number}.json"


def _read_record(out: Path, row: PromptRow) -> dict[str, Any]:
    path = _record_path(out, row)
    if path.is_file():
        return json.loads(path.read_text())
    return {"case_number": row.case_number, "prompt": row.prompt, "seed": row.seed}


def _write_record(out: Path, row: PromptRow, rec: dict[str, Any]) -> None:
    path = _record_path(out, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json_text(rec))


def _write_manifest(out: Path, rows: list[PromptRow], records: dict[int, dict], attack: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case_number", "prompt", "seed", "pre_success", "pre_score", "attack", "attacked",
                "adversarial_prompt", "attack_success", "attack_score", "images"])
    for row in rows:
        rec = records[row.case_number]
        w.writerow([row.case_number, row.prompt, row.seed, int(rec["pre_success"]), f"{max(rec['pre_scores']):.4f}",
                    attack, int(bool(rec.get("attacked"))), rec.get("adversarial_prompt", ""),
                    "" if rec.get("attack_success") is None else int(rec["attack_success"]),
                    f"{max(rec['attack_scores']):.4f}" if rec.get("attack_scores") else "",
                    " ".join(rec.get("attack_images") or rec["pre_images"])])
    atomic_write_text(out / "manifest.csv", buf.getvalue())


def attack_summary(metrics: dict[str, Any], out: Path, already: Optional[bool] = None) -> str:
    """The closing lines of the command: the ASR with its judge, and what was written where."""
    head = (f"{metrics['attack']}: ASR {metrics['asr']:.3f} = pre {metrics['pre_asr']:.3f} + attack "
            f"{metrics['post_asr']:.3f} over {metrics['n_prompts']} prompts (judge: {metrics['judge_rule']})")
    if already:
        return f"{head}\n{out} is already complete: nothing to do"
    return (f"{head}\nwrote {out}: metrics.json, manifest.csv, records/, images/pre/"
            + ("" if metrics["attack"] == "none" else f", images/{metrics['attack']}/, adversarial/")
            + ", attack.json, config.resolved.yaml")
