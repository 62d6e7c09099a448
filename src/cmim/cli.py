"""`python -m cmim <stage>`: the one entry point every Snakemake rule calls, runnable by hand too.

Each stage takes its inputs and outputs as explicit paths (no hidden reads), and options as JSON
from the rule's params. Where and how fast training runs (the config's `launch` block) comes from
`--launch` or, for jobs started by Snakemake, from the CMIM_LAUNCH variable the Snakefile sets: it
is never a tracked parameter, so moving a study to another launcher or partition retrains nothing.
Heavy imports (torch) happen inside the stage that needs them, so `python -m cmim validate`
answers in well under a second.

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

from cmim.config import ConfigError

LAUNCH_ENV = "CMIM_LAUNCH"


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
    from cmim.config import launch_settings

    raw = text if text is not None else os.environ.get(LAUNCH_ENV)
    return launch_settings(_json(raw) if raw else {})


def _read_run(path) -> dict:
    import yaml

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
    from cmim.config import evaluated_runs, load_config

    config = load_config(args.configfile, args.set)
    log(f"config OK: {len(config['datasets'])} dataset(s), {len(config['runs'])} run(s), "
        f"evaluations: {', '.join(config['evaluations']) or 'none'}")
    for task in config["evaluations"]:
        log(f"  {task}: {', '.join(evaluated_runs(config, task))}")
    return 0


def cmd_resolve(args) -> int:
    import yaml

    from cmim import io
    from cmim.config import load_config, resolve_run

    config = load_config(args.configfile, args.set)
    io.write_text(args.out, yaml.safe_dump(resolve_run(config, args.run), sort_keys=True))
    return 0


def cmd_write_config(args) -> int:
    import yaml

    from cmim import io

    io.write_text(args.out, yaml.safe_dump(_json(args.json), sort_keys=True))
    return 0


def cmd_demo_data(args) -> int:
    from cmim import io
    from cmim.data import scenes

    layout = {"demo-ade20k": "ade20k", "demo-coco": "coco"}[args.format]
    opts = _json(args.options)
    started = time.perf_counter()
    summary = scenes.generate(Path(args.root), layout, n_train=opts["n_train"], n_val=opts["n_val"],
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
                resize_short_side=opts.get("resize_short_side"), seed=opts.get("seed", 0), log=log)
    return 0


# ----------------------------------------------------------------------------- training


def cmd_pretrain(args) -> int:
    from cmim.launch import launch_pretrain

    run = _read_run(args.run_config)
    launch_pretrain(Path(args.run_config), Path(args.manifest), Path(args.out), launch_block(args.launch), run["run"],
                    log=log)
    return 0


def cmd_link_epoch(args) -> int:
    """Materialise a run's epoch checkpoint (exported under resume/ while training) as a rule output."""
    from cmim.errors import CheckpointError
    from cmim.paths import RunFiles

    source = RunFiles(Path(args.run_dir)).resume_epoch_checkpoint(args.epoch)
    if not source.exists():
        raise CheckpointError(f"{source} not found: run {args.run_dir} did not save epoch {args.epoch} (is it in "
                              f"its checkpoint_epochs? was resume/ deleted?); re-run its pretraining "
                              f"(snakemake --force {args.run_dir}/checkpoint.pt)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    try:
        os.link(source, out)           # no second copy of a large encoder
    except OSError:
        import shutil

        from cmim import io

        with io.atomic_path(out) as tmp:
            shutil.copyfile(source, tmp)
    log(f"[epoch checkpoint] {out} -> {source}")
    return 0


def cmd_finetune(args) -> int:
    from cmim.launch import launch_job
    from cmim.train.checkpoint import file_sha256, read_encoder_checkpoint

    run = _read_run(args.run_config)
    read_encoder_checkpoint(Path(args.checkpoint))  # fail here, before any job starts, on a bad file
    job = {"task": "finetune", "run_config": args.run_config, "checkpoint": args.checkpoint,
           "checkpoint_sha256": file_sha256(Path(args.checkpoint)), "train_manifest": args.train_manifest,
           "val_manifest": args.val_manifest, "options": _json(args.options), "data": _json(args.data),
           "blocks": args.blocks, "result": args.result}
    if args.blocks is not None:
        depth = run["encoder"]["depth"]
        if not 0 <= args.blocks <= depth:
            raise ConfigError(f"partial_finetune.blocks: k = {args.blocks} but run {run['run']}'s encoder has "
                              f"{depth} blocks; choose 0 <= k <= {depth}")
    name = f"{run['run']}-" + ("finetune" if args.blocks is None else f"partial-k{args.blocks}")
    launch_job(job, Path(args.out_dir), launch_block(args.launch), name, log=log)
    return 0


def cmd_dense(args) -> int:
    """ADE20K segmentation (UperNet) or COCO detection (Mask R-CNN): a training job like pretraining."""
    from cmim.launch import launch_job
    from cmim.train.checkpoint import file_sha256, read_encoder_checkpoint

    run = _read_run(args.run_config)
    read_encoder_checkpoint(Path(args.checkpoint))
    kind = {"ade20k": "segmentation", "coco": "detection"}[args.task]
    job = {"task": kind, "run_config": args.run_config, "checkpoint": args.checkpoint,
           "checkpoint_sha256": file_sha256(Path(args.checkpoint)), "train_manifest": args.train_manifest,
           "val_manifest": args.val_manifest, "options": _json(args.options), "data": _json(args.data),
           "result": args.result, "examples": args.examples}
    if args.task == "coco":
        if not args.gt_json or not Path(args.gt_json).exists():
            raise FileNotFoundError(f"the COCO val annotations {args.gt_json} are missing: AP is scored against the "
                                    f"real instances json; check datasets.<name>.root")
        job["gt_json"] = args.gt_json
    launch_job(job, Path(args.out_dir), launch_block(args.launch), f"{run['run']}-{args.task}", log=log)
    return 0


# ----------------------------------------------------------------------------- frozen evaluations


def _frozen_extractor(run: dict, checkpoint: Path):
    from cmim.evals.features import FeatureExtractor
    from cmim.train.checkpoint import load_encoder

    encoder, ckpt = load_encoder(checkpoint, expected_spec=run["encoder"])
    data = run["data"]
    return FeatureExtractor(encoder, run["probe_feature"], data["mean"], data["std"]), ckpt


def _labelled_classes(manifest_path) -> list[str]:
    from cmim.data.loader import class_names, read_manifest

    classes = class_names(read_manifest(manifest_path))
    if len(classes) < 2:
        raise ConfigError(f"{manifest_path}: a frozen evaluation needs a labelled dataset with >= 2 classes, "
                          f"found {len(classes)}; set evaluations.<task>.dataset to a labelled dataset")
    return classes


def cmd_features(args) -> int:
    import torch

    from cmim.evals.features import extract_split, save_features
    from cmim.evals.results import checkpoint_info
    from cmim.train.checkpoint import file_sha256

    run = _read_run(args.run_config)
    data, opts = _json(args.data), _json(args.options)
    _cpu_job(args, [args.train_manifest, args.val_manifest])
    classes = _labelled_classes(args.train_manifest)
    extractor, ckpt = _frozen_extractor(run, Path(args.checkpoint))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    common = dict(device=device, batch_size=opts["batch_size"], num_workers=_num_workers(args), log=log)
    train = extract_split(extractor, args.train_manifest, data["image_size"], data["eval_crop_pct"],
                          max_samples=opts["max_train_samples"], what="train features", **common)
    val = extract_split(extractor, args.val_manifest, data["image_size"], data["eval_crop_pct"],
                        max_samples=opts["max_val_samples"], what="val features", **common)
    save_features(args.out, train=train, val=val, run=run["run"], feature=run["probe_feature"], classes=classes,
                  dataset=data["dataset"], checkpoint=checkpoint_info(Path(args.checkpoint), ckpt,
                                                                      file_sha256(Path(args.checkpoint))),
                  wall_time_s=time.perf_counter() - started)
    log(f"[features] {run['run']} ({run['probe_feature']}): {len(train[1])} train, {len(val[1])} val, "
        f"dim {train[0].shape[1]}, {time.perf_counter() - started:.1f}s")
    return 0


def _dataset_info(feats: dict, classes: list[str]) -> dict:
    return {"name": feats["dataset"], "train_samples": len(feats["train_y"]), "val_samples": len(feats["val_y"]),
            "num_classes": len(classes)}


def cmd_knn(args) -> int:
    from cmim.evals import results
    from cmim.evals.features import load_features
    from cmim.evals.knn import knn_accuracy

    run = _read_run(args.run_config)
    opts = _json(args.options)
    feats = load_features(args.features)
    started = time.perf_counter()
    metrics = knn_accuracy(feats["train_x"], feats["train_y"], feats["val_x"], feats["val_y"], len(feats["classes"]),
                           k=opts["k"], temperature=opts["temperature"])
    protocol = {"k": opts["k"], "temperature": opts["temperature"], "similarity": "cosine",
                "feature": feats["feature"], "features": "centre view"}
    result = results.record(args.task, run, metrics, protocol=protocol, checkpoint=feats["checkpoint"],
                            dataset=_dataset_info(feats, feats["classes"]),
                            wall_time_s=time.perf_counter() - started + feats["wall_time_s"], feature=feats["feature"])
    results.write(Path(args.out), result)
    log(f"[knn] {run['run']} {args.task}: top1 {metrics['top1']:.2f}")
    return 0


def cmd_linear_probe(args) -> int:
    import torch

    from cmim.data.loader import read_manifest
    from cmim.evals import results
    from cmim.evals.features import load_features
    from cmim.evals.linear_probe import LinearProbe, ProbeOptions
    from cmim.train.checkpoint import file_sha256

    run = _read_run(args.run_config)
    opts = ProbeOptions.from_config(_json(args.options))
    data = _json(args.data)
    _cpu_job(args, [args.train_manifest, args.val_manifest] if opts.features != "cached" else [])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if opts.features == "cached":
        feats = load_features(args.features)
        classes, feature, checkpoint = feats["classes"], feats["feature"], feats["checkpoint"]
        probe = LinearProbe(None, len(classes), opts, device, data["image_size"], data["eval_crop_pct"], log=log)
        out = probe.run(cached=(feats["train_x"], feats["train_y"], feats["val_x"], feats["val_y"]))
        started -= feats["wall_time_s"]
    else:
        from cmim.evals.results import checkpoint_info

        classes = _labelled_classes(args.train_manifest)
        extractor, ckpt = _frozen_extractor(run, Path(args.checkpoint))
        feature = run["probe_feature"]
        checkpoint = checkpoint_info(Path(args.checkpoint), ckpt, file_sha256(Path(args.checkpoint)))
        probe = LinearProbe(extractor, len(classes), opts, device, data["image_size"], data["eval_crop_pct"],
                            num_workers=_num_workers(args), log=log)
        out = probe.run(args.train_manifest, args.val_manifest, read_manifest(args.train_manifest)["num_samples"])
    metrics = {k: out[k] for k in ("top1", "top5") if k in out}
    result = results.record(
        args.task, run, metrics, protocol={**opts.__dict__, "feature": feature}, checkpoint=checkpoint,
        dataset={"name": data["dataset"], "train_samples": out["train_samples"], "val_samples": out["val_samples"],
                 "num_classes": len(classes)},
        wall_time_s=time.perf_counter() - started, feature=feature, history=out["history"],
        feature_dim=out["feature_dim"], steps=out["steps"], lr=out["lr"], batch_size=out["batch_size"])
    results.write(Path(args.out), result)
    log(f"[linear probe] {run['run']} {args.task} ({feature}): top1 {metrics['top1']:.2f}")
    return 0


# ----------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    if args.what in ("table", "figure"):  # a paper table / figure from its plan (workflow/rules/paper.smk)
        from cmim.report import render

        return render.main([args.what, "--plan", args.plan, "--out", args.out])
    from cmim.report import tables

    if not args.inputs:
        raise ConfigError(f"report {args.what}: --inputs is required")
    if args.what == "probe-table":
        tables.probe_table([Path(p) for p in args.inputs], Path(args.out), Path(args.out_csv))
    elif args.what == "eval-table":
        tables.eval_table(args.task, [Path(p) for p in args.inputs], Path(args.out), Path(args.out_csv))
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
    s.set_defaults(fn=cmd_shard)

    s = sub.add_parser("pretrain", help="train one run on the configured launcher (resumes automatically)")
    s.add_argument("--run-config", required=True, help="the run's resolved config.yaml")
    s.add_argument("--manifest", required=True, help="train split manifest.json")
    s.add_argument("--out", required=True, help="the run's folder")
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
    s.add_argument("what", choices=["table", "figure", "probe-table", "eval-table", "loss-figure", "epochs-figure",
                                    "partial-figure"])
    s.add_argument("--inputs", nargs="+", help="result files (per-task tables and figures)")
    s.add_argument("--plan", help="table / figure: the plan as JSON (or @file), as workflow/rules/paper.smk passes it")
    s.add_argument("--out", required=True)
    s.add_argument("--out-csv")
    s.add_argument("--task", help="eval-table: the task whose results these are")
    s.set_defaults(fn=cmd_report)

    # --- bench / plan subcommands (cmim.bench, cmim.plan) ---
    from cmim.bench.cli import add_bench_parser
    from cmim.plan import add_plan_parser

    add_bench_parser(sub)
    add_plan_parser(sub)
    # --- end bench / plan ---
    return p


USER_ERRORS = {"ConfigError", "DataError", "ShardingError", "SourceError", "CheckpointError", "NonFiniteLoss",
               "RunLocked", "JobFailed"}


def is_user_error(e: BaseException) -> bool:
    """Errors caused by input (config, data, checkpoints, the disk), said in one line; anything else is
    a bug and keeps its traceback. By class name, so an error needs no heavy import to be recognised."""
    if isinstance(e, (OSError, ValueError)):
        return True
    return any(c.__name__ in USER_ERRORS and c.__module__.startswith("cmim.") for c in type(e).__mro__)


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
