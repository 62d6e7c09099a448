"""`python -m cmim <stage>`: the one entry point every Snakemake rule calls, runnable by hand too.

Each stage takes its inputs and outputs as explicit paths (no hidden reads), and options as JSON
from the rule's params. Where and how fast training runs (the config's `launch` block) comes from
`--launch` or, for jobs started by Snakemake, from the CMIM_LAUNCH variable the Snakefile sets: it
is never a tracked parameter, so moving a study to another launcher or partition retrains nothing.
Heavy imports (torch) happen inside the stage that needs them, so `python -m cmim validate`
answers in well under a second. This module parses and dispatches; the work is in the package
(cmim.evals.frozen, cmim.tasks, cmim.launch, cmim.report, ...).

A user error (bad config, data, checkpoint; a full disk; a NaN loss) ends with one line naming the
file or key and what to do, and a non-zero exit code; `--debug` (or CMIM_TRACEBACK=1, which the
Snakefile sets so job logs keep it) adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import yaml

from cmim import io, workflow
from cmim.bench.cli import add_bench_parser
from cmim.checkpoints.cli import add_checkpoint_parsers
from cmim.config import load_config
from cmim.config import warnings as config_warnings
from cmim.errors import ConfigError, UserError
from cmim.options import SELECTION_KEYS, from_dict
from cmim.options.evals import FeaturesOptions, KnnOptions, ProbeOptions
from cmim.plan import add_plan_parser
from cmim.report import render
from cmim.study import evaluated_runs, launch_settings, resolve_run

LAUNCH_ENV = "CMIM_LAUNCH"
MONITOR_ENV = "CMIM_MONITOR"


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"expected a JSON object, got {text!r}: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"expected a JSON object, got {text!r}")
    return value


def log(message: str) -> None:
    print(message, flush=True)


def launch_block(text: str | None) -> dict:
    """--launch JSON, else $CMIM_LAUNCH, else in-process; defaults filled and checked."""
    raw = text if text is not None else os.environ.get(LAUNCH_ENV)
    return launch_settings(_json(raw) if raw else {})


def monitor_block(args) -> dict | None:
    """A pretraining's kNN monitor: --monitor JSON, else $CMIM_MONITOR, else the schema's defaults; off
    without --val-manifest. Like the launch block, never a tracked param: it watches, it never retrains."""
    if not args.val_manifest:
        return None
    raw = args.monitor if args.monitor is not None else os.environ.get(MONITOR_ENV)
    return {**(_json(raw) if raw else {}), "val_manifest": args.val_manifest}


def _read_run(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run config {path} not found; it is written by the run_config rule "
                                f"(snakemake {path})")
    return yaml.safe_load(path.read_text())


def _num_workers(args) -> int:
    from cmim.launch import default_num_workers

    return default_num_workers(launch_block(getattr(args, "launch", None)))


def _cpu_job(args, manifests=()) -> None:
    """An evaluation that runs here: its thread count from the launch block, its shards verified."""
    import torch

    from cmim.launch import cpu_threads, verify_manifests

    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads(launch_block(getattr(args, "launch", None))["cpus_per_task"]))
    verify_manifests([m for m in manifests if m], log=log)


# ----------------------------------------------------------------------------- config and data


def cmd_validate(args) -> int:
    config = workflow.load_files(args.configfile, args.set)
    for line in config_warnings(config):
        log(f"warning: {line}")
    log(f"config OK: {len(config['datasets'])} dataset(s), {len(config['runs'])} run(s), "
        f"evaluations: {', '.join(config['evaluations']) or 'none'}")
    for task in config["evaluations"]:
        log(f"  {task}: {', '.join(evaluated_runs(config, task))}")
    return 0


def cmd_resolve(args) -> int:
    config = load_config(args.configfile, args.set)
    io.write_text(args.out, yaml.safe_dump(resolve_run(config, args.run), sort_keys=True))
    return 0


def cmd_write_config(args) -> int:
    io.write_text(args.out, yaml.safe_dump(_json(args.json), sort_keys=True))
    return 0


def cmd_demo_data(args) -> int:
    from cmim.data import scene_trees

    layout = {"demo-ade20k": "ade20k", "demo-coco": "coco"}[args.format]
    opts = _json(args.options)
    started = time.perf_counter()
    summary = scene_trees.generate(Path(args.root), layout, n_train=opts["n_train"], n_val=opts["n_val"],
                              size=opts["size"], seed=opts["seed"], log=log)
    io.write_json(args.done, {"layout": layout, "options": opts, "summary": summary})
    log(f"[demo-data] {args.format} in {args.root}: {time.perf_counter() - started:.1f}s")
    return 0


def cmd_shard(args) -> int:
    from cmim.data.shard import shard_split

    opts = _json(args.options)
    root = None if args.root in ("", "auto") else args.root
    shard_split(args.format, root, args.dataset, args.split, args.source_split, Path(args.out_dir),
                max_samples=opts.get("max_samples"), shard_max_count=opts["shard_max_count"],
                shard_max_bytes=opts["shard_max_bytes"], max_bad_fraction=opts["max_bad_fraction"],
                resize_short_side=opts.get("resize_short_side"), seed=opts.get("seed", 0), workers=args.workers,
                log=log)
    return 0


# ----------------------------------------------------------------------------- training


def cmd_pretrain(args) -> int:
    from cmim.launch import launch_pretrain

    run = _read_run(args.run_config)
    launch_pretrain(Path(args.run_config), Path(args.manifest), Path(args.out), launch_block(args.launch), run["run"],
                    log=log, monitor=monitor_block(args))
    return 0


def cmd_link_epoch(args) -> int:
    """Materialise a run's epoch checkpoint (exported under resume/ while training) as a rule output."""
    from cmim.train.checkpoint import link_epoch_export

    link_epoch_export(Path(args.run_dir), args.epoch, Path(args.out), log=log)
    return 0


def _transfer(args, evaluation: str, name: str, **extra) -> int:
    """A transfer evaluation (finetune, partial finetune, ADE20K, COCO): a training job like pretraining."""
    from cmim.launch import launch_job
    from cmim.tasks import transfer_job

    run = _read_run(args.run_config)
    job = transfer_job(evaluation, run, run_config=args.run_config, checkpoint=args.checkpoint,
                       train_manifest=args.train_manifest, val_manifest=args.val_manifest,
                       options=_json(args.options), data=_json(args.data), result=args.result, **extra)
    launch_job(job, Path(args.out_dir), launch_block(args.launch), f"{run['run']}-{name}", log=log)
    return 0


def cmd_finetune(args) -> int:
    if args.blocks is None:
        return _transfer(args, "finetune", "finetune")
    return _transfer(args, "partial_finetune", f"partial-k{args.blocks}", blocks=args.blocks)


def cmd_dense(args) -> int:
    """ADE20K segmentation (UperNet) or COCO detection (Mask R-CNN)."""
    return _transfer(args, args.task, args.task, examples=args.examples, gt_json=args.gt_json)


# ----------------------------------------------------------------------------- frozen evaluations


def cmd_features(args) -> int:
    from cmim.evals import frozen

    _cpu_job(args, [args.train_manifest, args.val_manifest])
    opts = from_dict(FeaturesOptions, _json(args.options), "features")
    frozen.features(_read_run(args.run_config), Path(args.checkpoint), args.train_manifest, args.val_manifest,
                    _json(args.data), opts, Path(args.out), num_workers=_num_workers(args), log=log)
    return 0


def cmd_knn(args) -> int:
    from cmim.evals import frozen

    opts = from_dict(KnnOptions, _json(args.options), "evaluations.knn", ignore=SELECTION_KEYS)
    frozen.knn(_read_run(args.run_config), args.features, opts, args.task, Path(args.out), log=log)
    return 0


def cmd_linear_probe(args) -> int:
    from cmim.evals import frozen

    opts = from_dict(ProbeOptions, _json(args.options), "evaluations.linear_probe", ignore=SELECTION_KEYS)
    _cpu_job(args, [args.train_manifest, args.val_manifest] if opts.features != "cached" else [])
    frozen.linear_probe(_read_run(args.run_config), opts, _json(args.data), args.task, Path(args.out),
                        features_path=args.features, checkpoint=args.checkpoint, train_manifest=args.train_manifest,
                        val_manifest=args.val_manifest, num_workers=_num_workers(args),
                        decode=launch_block(getattr(args, "launch", None))["decode"], log=log)
    return 0


# ----------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    if args.what in ("table", "figure", "summary"):  # from its plan (workflow/rules/paper.smk)
        return render.main([args.what, "--plan", args.plan, "--out", args.out])
    from cmim.report import tables

    if not args.inputs:
        raise ConfigError(f"report {args.what}: --inputs is required")
    html_out = Path(args.out_html) if args.out_html else None
    if args.what == "probe-table":
        tables.probe_table([Path(p) for p in args.inputs], Path(args.out), Path(args.out_csv), html_out)
    elif args.what == "eval-table":
        tables.eval_table(args.task, [Path(p) for p in args.inputs], Path(args.out), Path(args.out_csv), html_out)
    elif args.what == "loss-figure":
        from cmim.report import figures

        figures.loss_curves([Path(p) for p in args.inputs], Path(args.out))
    elif args.what == "epochs-figure":
        from cmim.report import figures

        figures.accuracy_vs_epochs([Path(p) for p in args.inputs], Path(args.out))
    elif args.what == "partial-figure":
        from cmim.report import figures

        figures.partial_finetune([Path(p) for p in args.inputs], Path(args.out))
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmim", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(s):
        s.add_argument("--configfile", nargs="+", default=["config.yaml"], help="config files, merged left to right")
        s.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                       help="overrides, e.g. runs.mae.epochs=2")

    def launch_arg(s):
        s.add_argument("--launch", default=None,
                       help=f"JSON of the config's launch block (default: ${LAUNCH_ENV}, else in-process)")

    s = sub.add_parser("validate", help="check a config (schema + cross-key checks)")
    config_args(s)
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("resolve", help="write one run's fully resolved config")
    config_args(s)
    s.add_argument("--run", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_resolve)

    s = sub.add_parser("write-config", help="write a resolved run config given as JSON (used by the DAG)")
    s.add_argument("--json", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_write_config)

    s = sub.add_parser("demo-data", help="generate a demo scene dataset in the ADE20K or COCO layout")
    s.add_argument("--format", required=True, choices=["demo-ade20k", "demo-coco"])
    s.add_argument("--root", required=True)
    s.add_argument("--options", required=True, help="JSON: n_train, n_val, size, seed")
    s.add_argument("--done", required=True, help="marker file written last")
    s.set_defaults(fn=cmd_demo_data)

    s = sub.add_parser("shard", help="write one split of a dataset as WebDataset shards + manifest.json")
    for a in ("--format", "--root", "--dataset", "--split", "--source-split", "--out-dir"):
        s.add_argument(a, required=True)
    s.add_argument("--options", required=True, help="JSON: shard_max_count, shard_max_bytes, max_bad_fraction, ...")
    s.add_argument("--workers", type=int, default=None,
                   help="processes that decode and check images (default: every core this process may use)")
    s.set_defaults(fn=cmd_shard)

    s = sub.add_parser("pretrain", help="train one run on the configured launcher (resumes automatically)")
    s.add_argument("--run-config", required=True, help="the run's resolved config.yaml")
    s.add_argument("--manifest", required=True, help="train split manifest.json")
    s.add_argument("--out", required=True, help="the run's folder")
    s.add_argument("--val-manifest", default=None, help="val split manifest.json: turns the online kNN monitor on")
    s.add_argument("--monitor", default=None, help=f"JSON of the config's monitor block (default: ${MONITOR_ENV})")
    launch_arg(s)
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("link-epoch", help="materialise a run's epoch checkpoint as a rule output")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--epoch", required=True, type=int)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_link_epoch)

    s = sub.add_parser("finetune", help="end-to-end (or, with --blocks K, partial) finetuning of a run's encoder")
    for a in ("--run-config", "--checkpoint", "--train-manifest", "--val-manifest", "--out-dir", "--result"):
        s.add_argument(a, required=True)
    s.add_argument("--options", required=True, help="JSON of evaluations.finetune (this run's protocol)")
    s.add_argument("--data", required=True, help="JSON: dataset, mean, std, image_size, eval_crop_pct")
    s.add_argument("--blocks", type=int, default=None, help="partial finetuning: train only the last K blocks")
    launch_arg(s)
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("dense", help="ADE20K segmentation (UperNet) or COCO detection (Mask R-CNN) of a run's encoder")
    s.add_argument("--task", required=True, choices=["ade20k", "coco"])
    for a in ("--run-config", "--checkpoint", "--train-manifest", "--val-manifest", "--out-dir", "--result",
              "--examples"):
        s.add_argument(a, required=True)
    s.add_argument("--gt-json", help="coco: the val split's instances json (AP is scored against it)")
    s.add_argument("--options", required=True, help="JSON of evaluations.<task> (this run's protocol)")
    s.add_argument("--data", required=True, help="JSON: dataset, mean, std, image_size, eval_crop_pct")
    launch_arg(s)
    s.set_defaults(fn=cmd_dense)

    s = sub.add_parser("features", help="frozen centre-view features of a checkpoint on a train and a val split")
    for a in ("--run-config", "--checkpoint", "--train-manifest", "--val-manifest", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--data", required=True, help="JSON: dataset, mean, std, image_size, eval_crop_pct")
    s.add_argument("--options", required=True, help="JSON of the config's features block")
    launch_arg(s)
    s.set_defaults(fn=cmd_features)

    s = sub.add_parser("knn", help="weighted kNN classification of cached frozen features")
    for a in ("--run-config", "--features", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--options", required=True, help="JSON of evaluations.knn")
    s.add_argument("--task", default="knn", help="result name: knn or knn-ep<E>")
    s.set_defaults(fn=cmd_knn)

    s = sub.add_parser("linear-probe", help="linear probe of a run's frozen encoder")
    s.add_argument("--run-config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--features", help="cached features file (features: cached)")
    for a in ("--checkpoint", "--train-manifest", "--val-manifest"):
        s.add_argument(a, help="(features: augmented)")
    s.add_argument("--options", required=True, help="JSON of evaluations.linear_probe")
    s.add_argument("--data", required=True, help="JSON: mean, std, image_size, eval_crop_pct, dataset")
    s.add_argument("--task", default="linear_probe", help="result name: linear_probe or linear_probe-ep<E>")
    launch_arg(s)
    s.set_defaults(fn=cmd_linear_probe)

    s = sub.add_parser("report", help="tables and figures")
    s.add_argument("what", choices=["table", "figure", "summary", "probe-table", "eval-table", "loss-figure",
                                    "epochs-figure", "partial-figure"])
    s.add_argument("--inputs", nargs="+", help="result files (per-task tables and figures)")
    s.add_argument("--plan", help="table / figure: the plan as JSON (or @file), as workflow/rules/paper.smk passes it")
    s.add_argument("--out", required=True)
    s.add_argument("--out-csv")
    s.add_argument("--out-html", help="probe-table / eval-table: the table as the report shows it")
    s.add_argument("--task", help="eval-table: the task whose results these are")
    s.set_defaults(fn=cmd_report)

    add_checkpoint_parsers(sub, config_args)
    add_bench_parser(sub)
    add_plan_parser(sub)
    return p


def is_user_error(e: BaseException) -> bool:
    """Errors caused by input (config, data, checkpoints, the disk), said in one line; anything else is
    a bug and keeps its traceback."""
    return isinstance(e, (UserError, OSError, ValueError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CMIM_TRACEBACK") == "1"
    try:
        return args.fn(args)
    except Exception as e:
        if not is_user_error(e):
            raise
        if debug:
            traceback.print_exc()
        kind = "config error" if isinstance(e, ConfigError) else "error"
        print(f"cmim {args.command}: {kind}: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
