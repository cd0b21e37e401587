"""Command line: `python -m erasediff <command> --config X.yaml [--set a.b=value ...]` (also `erasediff`).

Hyperparameters live only in YAML; the command line takes the config, `--set` overrides and run-level
things (output directory, seed, device, resume). Every bad input ends with one `error:` line and exit
status 2, before anything is written.

Why one file over 300 lines: it is the argparse declaration of every command (help texts included)
plus a thin handler each; the work lives in the modules the handlers call.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import dump_config
from .distributed import is_main_process
from .errors import ErasediffError, Interrupted
from .experiment import load_config
from .files import atomic_write_text, json_text
from .rundir import FolderClaim


def _common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required, help="experiment YAML (see DDPM/configs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--seed", type=int, help="run seed (overrides `seed`)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides `device`)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _overrides(args: argparse.Namespace) -> list[str]:
    """The --set items, then --seed and --device as `seed=` / `device=` items."""
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    return overrides


def _load(args: argparse.Namespace):
    return load_config(args.config, _overrides(args))


def cmd_train(args: argparse.Namespace, unlearn: bool) -> None:
    cfg = _load(args)
    from .loop import train

    if unlearn:  # unset artifact paths -> <artifacts dir>/<name>, as `precompute` wrote them
        from .methods import get_method

        cfg = get_method(cfg.method.name).with_artifact_paths(cfg, args.artifacts_dir)

    run_dir = Path(args.output_dir) if args.output_dir is not None else cfg.run_dir()
    summary = train(cfg, run_dir, resume=args.resume, require_pretrained=unlearn, training_only=not unlearn,
                    progress=not args.no_progress)
    if not is_main_process():  # under a launcher the main process reports
        return
    print(json_text({k: summary[k] for k in ("method", "steps", "wall_time_s", "sec_per_step", "final_logs")}))
    if summary.get("already_complete"):
        print(f"{run_dir} is already complete ({summary['steps']} steps): nothing to do (raise train.steps to "
              "continue it)")
        return
    print(f"wrote {run_dir}: config.resolved.yaml, log.jsonl, metrics.json, model/, "
          f"{'model_ema/, ' if summary['ema_model_dir'] else ''}checkpoints/, samples/, losses.png, COMPLETE")


def cmd_sample(args: argparse.Namespace) -> None:
    cfg = _load(args)
    from .evaluate import class_rows, save_rows_png
    from .sample_folders import read_samples, sample_to_folder

    num_classes = cfg.model.arch.num_classes
    classes = args.classes if args.classes is not None else list(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ErasediffError(f"--classes {bad} out of range: valid classes are 0..{num_classes - 1}")
    if args.n_per_class < 1:
        raise ErasediffError(f"--n-per-class must be >= 1 (got {args.n_per_class})")
    out = Path(args.output_dir)
    info = sample_to_folder(cfg, args.model, out, {c: args.n_per_class for c in classes}, progress=not args.no_progress)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # the other processes of a multi-process launch only sample
        print(json.dumps(info))
        return
    if not (out / "config.resolved.yaml").is_file():
        atomic_write_text(out / "config.resolved.yaml", dump_config(cfg))
    per_row = min(8, args.n_per_class)
    images, labels = read_samples(out, {c: per_row for c in classes}, cfg.model.arch.in_channels)
    save_rows_png(out / "grid.png", [class_rows(images, labels, per_row)], per_row)
    print(json.dumps(info))
    print(f"wrote {info['sampled']} new images to {out} ({info['skipped']} already there): <class>/NNNNN.png, "
          "manifest.csv, sample.json, grid.png, config.resolved.yaml")


def cmd_evaluate(args: argparse.Namespace) -> None:
    cfg = _load(args)
    from .evaluate import evaluate, evaluate_to_folder

    sd = cfg.model.backbone == "stable_diffusion"
    if args.output_dir is not None and len(args.model) > 1:
        raise ErasediffError("--output-dir takes one --model; with several models each writes MODEL/eval")
    outs = [Path(args.output_dir) if args.output_dir else Path(m) / "eval" for m in args.model]
    for out in outs:  # check them all before the first (minutes-long) evaluation
        if (out / "metrics.json").exists():
            raise ErasediffError(f"{out / 'metrics.json'} already exists (results are never overwritten): "
                                 "choose another --output-dir")
    if sd:
        from .evaluate_sd import check_sd_evaluation, evaluate_sd

        if args.reference is not None:
            raise ErasediffError("--reference is for evaluate.metrics weight_distance, which a stable_diffusion "
                                 "model does not have")
        check_sd_evaluation(cfg, args.classifier)
        from accelerate import PartialState

        from .device import resolve_device
        from .generate import generate

        if not PartialState(cpu=resolve_device(cfg.device).type == "cpu").is_main_process:
            for model, out in zip(args.model, outs):  # under `accelerate launch`: the others generate their share
                generate(cfg, cfg.evaluate.prompts, out / "samples", model, progress=False,
                         max_rows=cfg.evaluate.max_prompts)
            return
    headline = ("p_f", "entropy_f", "acc_f", "acc_remain", "fd_remain", "fid", "precision", "recall", "is_mean", "l2",
                "relative_l2", "acc_forget", "acc_remain_mean", "clip_score", "coco_fid", "nudenet_total",
                "nudenet_images_with_exposed")
    for model, out in zip(args.model, outs):
        if sd:
            def score(model=model, out=out):
                return evaluate_sd(cfg, model, out, classifier=args.classifier, progress=not args.no_progress), None, None
        else:
            def score(model=model, out=out):
                return evaluate(cfg, model, classifier_dir=args.classifier, progress=not args.no_progress,
                                samples_dir=out / "samples", reference=args.reference)
        metrics, _, _ = evaluate_to_folder(cfg, out, score)
        print(json_text({"model": model, **{k: metrics[k] for k in headline if k in metrics}}))
        print(f"wrote {out}: metrics.json, {'' if sd else 'grid.png, '}samples/, config.resolved.yaml")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    cfg = _load(args)
    from .classifier_training import train_eval_classifier

    out = Path(args.output_dir)
    with FolderClaim(out, "output directory") as claim:
        if not claim.is_empty():
            raise ErasediffError(f"output directory {out} already exists and is not empty (results are never "
                                 "overwritten)")
        info = train_eval_classifier(cfg, out, progress=not args.no_progress)
    print(json_text(info))
    print(f"wrote {out}")


def cmd_precompute(args: argparse.Namespace) -> None:
    from .precompute import precompute

    cfg, results = precompute(args.config, _overrides(args), args.artifacts_dir, progress=not args.no_progress)
    if not is_main_process():  # under a launcher the main process reports
        return
    if not results:
        print(f"method '{cfg.method.name}' reads no precomputed files: nothing to do")
    for r in results:
        if r.get("kept"):
            print(f"kept {r['path']} (method.{r['artifact']}: already there; delete it to recompute)")
        else:
            print(json_text(r))
            print(f"wrote {r['path']} (method.{r['artifact']})")


def cmd_convert(args: argparse.Namespace) -> None:
    from .convert import convert_sa_checkpoint, convert_sa_fisher

    if args.checkpoint is None and args.fisher is None:
        raise ErasediffError("convert needs --checkpoint ckpt.pth and/or --fisher fisher_dict.pkl")
    if args.checkpoint is not None:
        if args.output_dir is None:
            raise ErasediffError("--checkpoint needs --output-dir (the run directory to write)")
        info = convert_sa_checkpoint(args.checkpoint, args.output_dir)
        print(json.dumps({k: info[k] for k in info if k != "arch"}))
        print(f"wrote {args.output_dir}: model/, {'model_ema/, ' if info['parts']['model_ema'] else ''}conversion.json")
    if args.fisher is not None:
        if args.fisher_output is None:
            raise ErasediffError("--fisher needs --fisher-output (the safetensors file to write)")
        out = convert_sa_fisher(args.fisher, args.fisher_output, trust_pickle=args.trust_pickle)
        print(f"wrote {out}")


def cmd_generate(args: argparse.Namespace) -> None:
    cfg = _load(args)
    from .generate import generate

    prompts = args.prompts or cfg.evaluate.prompts
    if prompts is None:
        raise ErasediffError("generate needs a prompt CSV: pass --prompts CSV or set evaluate.prompts")
    info = generate(cfg, prompts, args.output_dir, args.model, progress=not args.no_progress)
    print(json.dumps(info))
    print(f"wrote {info['written']} images to {info['output_dir']} ({info['skipped_existing']} existing kept; "
          f"manifest {info['manifest']})")


def cmd_attack(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, _overrides(args), tuple(args.attack or ()))
    from .robustness import attack_summary, run_attack

    metrics = run_attack(cfg, args.model, args.output_dir, progress=not args.no_progress)
    print(json_text({k: metrics[k] for k in ("attack", "model", "n_prompts", "pre_asr", "post_asr", "asr",
                                             "judge_rule")}))
    print(attack_summary(metrics, Path(args.output_dir), metrics.get("already_complete")))


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    text, out, grid = write_report(args.layout, args.results, args.output)
    print(text)
    print(f"wrote {out}" + (f" and {grid} (one panel per method in table order, one row per class)" if grid else ""))


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import run_bench

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    _, table = run_bench(args.config, overrides, warmup=args.warmup, steps=args.steps, output_dir=args.output_dir,
                         progress=not args.no_progress, sample_images=args.sample_images)
    print(table, end="")
    if args.output_dir:
        print(f"wrote {Path(args.output_dir)}: bench.json, bench.md")


def cmd_forget_each(args: argparse.Namespace) -> None:
    from .forget_each import make_plan, run_forget_each

    plan = make_plan(args.config_dir, args.output_dir, args.methods, args.classes, args.seeds, args.overrides, args.device)
    run_forget_each(plan, progress=not args.no_progress, table_only=args.table_only)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(args.config_dir), Path(args.output_dir), device=args.device or "auto", progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erasediff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, unlearn, help_ in (
        ("train", False, "train a model with a training objective (pretraining from scratch, Retrain, Finetune)"),
        ("unlearn", True, "unlearn data.forget_classes from model.pretrained with the config's method (e.g. EraseDiff)"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        p.add_argument("--output-dir", type=Path, help="run directory (default results/<experiment>/<method>/seed<k>)")
        p.add_argument("--resume", action="store_true", help="continue the run in the run directory from its newest checkpoint")
        if unlearn:
            _artifacts_dir(p)
        p.set_defaults(func=lambda a, u=unlearn: cmd_train(a, u))

    p = sub.add_parser("sample", help="generate N images per class into a folder with a manifest (resumable, sharded)",
                       description="generate N images per class (evaluation seed `sample.seed`) into DIR/<class>/NNNNN.png, "
                       "with manifest.csv, sample.json and grid.png. Images already in DIR are kept (a re-run resumes or "
                       "extends the folder); a folder of another model or sampler is refused. Under `accelerate launch "
                       "--num_processes N -m erasediff sample ...` (GPUs) or `torchrun --nproc_per_node N -m erasediff "
                       "sample ...` (CPUs) the processes split the work.")
    _common(p)
    p.add_argument("--model", required=True, help="run directory, model directory or Hub id")
    p.add_argument("--output-dir", required=True, help="sample folder (new, or one of the same model and sampler)")
    p.add_argument("--n-per-class", type=int, default=16)
    p.add_argument("--classes", type=int, nargs="+", help="classes to sample (default: all)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="metrics of models: p_f, entropy_f, acc_remain, fd_remain, FID, P/R, IS, WD; "
                       "Stable Diffusion: class accuracy, FID, CLIP score, NudeNet counts",
                       description="sample evaluate.n_per_class images per remaining class and evaluate.n_forget per "
                       "forgotten class (data.forget_classes) into OUT/samples, then compute evaluate.metrics; for a "
                       "stable_diffusion config, generate the images of evaluate.prompts with the `generate` section "
                       "into OUT/samples, then compute evaluate.metrics (imagenette_accuracy, fid, clip_score, nudenet)")
    _common(p)
    p.add_argument("--model", required=True, nargs="+",
                   help="run directories, model directories or Hub ids (several: one process evaluates them all)")
    p.add_argument("--classifier", help="classifier directory, or for Stable Diffusion a torchvision ImageNet model "
                   "name (default evaluate.classifier)")
    p.add_argument("--reference", help="the Retrain model for evaluate.metrics weight_distance")
    p.add_argument("--output-dir", help="where metrics.json, grid.png and samples/ go (default MODEL/eval); an "
                   "interrupted evaluation resumes its samples/")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train-classifier", help="train the evaluation classifier on real data (digits CNN)",
                       description="train the evaluation classifier on the config's dataset (train split), report test accuracy")
    _common(p)
    p.add_argument("--output-dir", required=True)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("precompute", help="make the files a method reads (SA's Fisher, SalUn's mask, BlindSpot's "
                       "proxy) before `unlearn`",
                       description="compute every missing artifact that the config's method declares, from the same "
                       "config (and --set items) as its `unlearn` run: Selective Amnesia's Fisher diagonal, SalUn's "
                       "saliency mask, BlindSpot's stage-1 proxy (a `train` run of method.proxy_config). Each goes to "
                       "its method key's path, or when unset to --artifacts-dir; what exists is kept, never "
                       "overwritten; an interrupted proxy run is resumed")
    _common(p)
    _artifacts_dir(p)
    p.set_defaults(func=cmd_precompute)

    p = sub.add_parser("convert", help="import an SA / SalUn / official-EraseDiff ckpt.pth and SA's fisher_dict.pkl",
                       description="convert SA-format CIFAR10 checkpoints (ckpt.pth, read with weights_only=True) into a run "
                       "directory (model/, model_ema/) that model.pretrained loads, and SA's Fisher pickle into safetensors")
    p.add_argument("--checkpoint", help="SA-format ckpt.pth")
    p.add_argument("--output-dir", help="run directory to write for --checkpoint (must not exist or be empty)")
    p.add_argument("--fisher", help="SA's fisher_dict.pkl")
    p.add_argument("--fisher-output", help="safetensors file to write for --fisher")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a Fisher file that holds more than tensors (runs code from the file: trusted files only)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("generate", help="Stable Diffusion: images of a prompt CSV (I2P format accepted) + manifest.csv",
                       description="generate images of every row of a prompt CSV (columns prompt[, evaluation_seed|seed]"
                       "[, evaluation_guidance|guidance][, case_number][, num_images]) with the config's pipeline "
                       "(model.sd.pipeline, else model.pretrained) and its `generate` section (scheduler, steps, "
                       "guidance, size, images per prompt, dtype); files <case_number>_<k>.png; existing files are "
                       "skipped (resumable); shards rows across processes under `accelerate launch`")
    _common(p)
    p.add_argument("--model", help="run directory / UNet folder / Hub id whose UNet replaces the pipeline's (an "
                   "unlearned model); default: the pipeline's own")
    p.add_argument("--prompts", help="prompt CSV (default evaluate.prompts)")
    p.add_argument("--output-dir", required=True, help="image folder (created; existing images are kept and skipped)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("attack", help="Stable Diffusion: try to bring an erased concept back (UnlearnDiffAtk, "
                       "Ring-A-Bell, textual inversion, none) and report the attack success rate",
                       description="run the config's `attack` (or the YAML given with --attack) on --model for every "
                       "prompt of robustness.prompts: the plain prompt's images first (pre-attack), then each failing "
                       "prompt attacked; every image judged by robustness.judge. Writes OUT/metrics.json (pre-ASR, "
                       "ASR), manifest.csv, records/, images/, adversarial/; an interrupted run resumes when the same "
                       "command runs again (docs/robustness.md)")
    _common(p)
    p.add_argument("--attack", action="append", metavar="YAML", help="attack YAML laid over --config (e.g. "
                   "StableDiffusion/configs/attacks/unlearndiffatk.yaml); default: the config's attack section")
    p.add_argument("--model", required=True, help="the attacked model: run directory, UNet folder, Hub id or the "
                   "pipeline itself (its own UNet: SD v1.4)")
    p.add_argument("--output-dir", required=True, help="attack folder (new, or the same run's to resume)")
    p.set_defaults(func=cmd_attack)

    from .report import LAYOUTS

    p = sub.add_parser("report", help="print a paper table from the evaluated runs of a results folder",
                       description="read <RESULTS>/<run>/eval/metrics.json (and the runs' metrics.json) and print the "
                       "table in the paper's layout, each cell as 'ours (paper)'; writes it to <RESULTS>/<layout>.md")
    p.add_argument("--layout", required=True, choices=sorted(LAYOUTS), help="which table")
    p.add_argument("--results", required=True, help="folder with one run directory per method (a script's OUT)")
    p.add_argument("--output", help="markdown file to write (default <RESULTS>/<layout>.md)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="per-step time and peak memory of several methods, as ratios to Finetune",
                       description="prepare every --config as `unlearn` would (same model, same batches), each in its own "
                       "process, run --warmup untimed and --steps timed outer steps, and print seconds per step and peak "
                       "memory (CUDA max allocated; CPU peak RSS) with their ratios to the Finetune config (else the first)")
    p.add_argument("--config", nargs="+", required=True, help="experiment YAMLs, one per method (include a Finetune one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every config, e.g. --set data.batch_size=16, or in one config "
                   "named by its file stem: --set selective_amnesia:method.fisher=F (repeatable)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides `device`)")
    p.add_argument("--warmup", type=int, default=3, help="untimed outer steps first (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed outer steps (default 10)")
    p.add_argument("--sample-images", type=int, default=0, metavar="N",
                   help="measure sampling instead: N images per config with its sample section, after --warmup "
                   "untimed batches; prints images/s and peak memory")
    p.add_argument("--output-dir", help="also write bench.json and bench.md here (never overwritten)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("forget-each", help="unlearn every class separately (several seeds and methods) and print the "
                       "class x method table", description="from one config folder: per seed a base model (pretrain.yaml) "
                       "and a judge, then for every class each method unlearning that class alone from that base, every "
                       "model evaluated on the same noise (p_f, p_f_in_dist, fd_f, acc_remain, fd_remain). Writes "
                       "OUTPUT/forget_each.md, .json and .png; finished stages are reused and interrupted ones resumed "
                       "when the same command runs again (docs/experiments.md \"Forget each digit\").")
    p.add_argument("--config-dir", default=str(_default_demo_configs()),
                   help="folder with pretrain.yaml and one YAML per method (default DDPM/configs/digits)")
    p.add_argument("--methods", nargs="+", help="method configs of the folder by file stem (default: erasediff so "
                   "finetune selective_amnesia salun blindspot)")
    p.add_argument("--classes", type=int, nargs="+", help="the classes to forget, one at a time (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of base model, judge and unlearning "
                   "(default 0 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every config, e.g. --set device=cpu; SCOPE:KEY=VALUE in one scope: "
                   "pretrain (base model and judge), eval (the evaluations), unlearn (the unlearning runs) or a "
                   "method, e.g. --set unlearn:train.steps=600 --set erasediff:method.target=random_label (repeatable)")
    p.add_argument("--output-dir", default="results/forget_each")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--table-only", action="store_true", help="run nothing: write the tables of the cells already "
                   "evaluated (e.g. while other processes run other classes into the same --output-dir)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_forget_each)

    p = sub.add_parser("demo", help="offline CPU demo: pretrain on digits, unlearn digit 0 with EraseDiff, evaluate",
                       description="train a class-conditional DDPM on scikit-learn digits, a CNN classifier, unlearn digit 0 "
                       "with EraseDiff, and compare Unscrubbed vs EraseDiff on the same sampling noise. Finished stages "
                       "are reused on a second run.")
    p.add_argument("--config-dir", default=str(_default_demo_configs()),
                   help="folder with pretrain.yaml and erasediff.yaml (default DDPM/configs/digits)")
    p.add_argument("--output-dir", default="results/demo")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    from . import random_pipeline, time_to_forget  # their own subcommands (each module owns its arguments)

    random_pipeline.add_parser(sub)
    time_to_forget.add_parser(sub)
    return parser


def _artifacts_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts-dir", help="folder of the method's precomputed files whose config key is unset "
                   "(method.fisher, method.mask, method.proxy); default <output_root>/<experiment>")


def _default_demo_configs() -> Path:
    """DDPM/configs/digits of the source checkout (the package is installed editable from it)."""
    here = Path(__file__).resolve().parents[2] / "DDPM" / "configs" / "digits"
    return here if here.is_dir() else Path("DDPM/configs/digits")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Interrupted as exc:
        if is_main_process():  # one message, not one per process under a launcher
            print(f"interrupted: {exc}; resume with: {_resume_command(argv)}", file=sys.stderr)
        return exc.exit_code
    except ErasediffError as exc:
        if is_main_process():
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: stopped at once; a run continues from its last checkpoint with --resume, a sample "
              "folder or evaluation by running the same command again", file=sys.stderr)
        return 130
    return 0


def _resume_command(argv: list[str]) -> str:
    import shlex

    again = "--resume" in argv or argv[:1] in (["forget-each"], ["demo"])  # these resume by running again
    return shlex.join(["python", "-m", "erasediff", *argv, *([] if again else ["--resume"])])


if __name__ == "__main__":
    sys.exit(main())
