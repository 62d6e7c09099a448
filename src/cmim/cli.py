"""`python -m cmim <stage>`: the one entry point every Snakemake rule calls, runnable by hand too.

Each stage takes its inputs and outputs as explicit paths (no hidden reads), and options as JSON
from the rule's params. Heavy imports (torch) happen inside the stage that needs them, so
`python -m cmim validate` answers in well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cmim.config import ConfigError


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"expected a JSON object, got {text!r}: {e}") from e
    if not isinstance(value, dict):
        raise SystemExit(f"expected a JSON object, got {text!r}")
    return value


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- stages


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


def cmd_pretrain(args) -> int:
    import yaml

    from cmim.launch import launch_pretrain

    run = yaml.safe_load(Path(args.run_config).read_text())
    launch = _json(args.launch)
    launch_pretrain(Path(args.run_config), Path(args.manifest), Path(args.out), launch, run["run"], log=log)
    return 0


def cmd_linear_probe(args) -> int:
    import torch
    import yaml

    from cmim import io
    from cmim.data.loader import class_names, read_manifest
    from cmim.evals.features import FeatureExtractor
    from cmim.evals.linear_probe import LinearProbe, ProbeOptions
    from cmim.train.checkpoint import load_encoder

    run = yaml.safe_load(Path(args.run_config).read_text())
    opts = ProbeOptions.from_config(_json(args.options))
    data = _json(args.data)
    encoder, ckpt = load_encoder(Path(args.checkpoint), expected_spec=run["encoder"])
    feature = run["probe_feature"]
    extractor = FeatureExtractor(encoder, feature, data["mean"], data["std"])
    train_manifest = read_manifest(args.train_manifest)
    num_classes = len(class_names(train_manifest))
    if num_classes < 2:
        raise SystemExit(f"{args.train_manifest}: a linear probe needs a labelled dataset with >= 2 classes")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    result = LinearProbe(extractor, num_classes, opts, device, data["image_size"], data["eval_crop_pct"],
                         log=log).run(args.train_manifest, args.val_manifest, train_manifest["num_samples"])
    result.update(run=run["run"], method=run["method"], feature=feature, task="linear_probe",
                  encoder=run["encoder"], pretrain_epochs=run["epochs"] if run["method"] not in
                  ("random_init", "raw_pixels") else 0, dataset=data["dataset"], protocol=opts.__dict__,
                  wall_time_s=time.perf_counter() - started, checkpoint_step=ckpt.get("step"))
    io.write_json(args.out, result)
    log(f"[linear probe] {run['run']} ({feature}): top1 {result['top1']:.2f}")
    return 0


def cmd_report(args) -> int:
    from cmim.report import tables

    if args.what == "probe-table":
        tables.probe_table([Path(p) for p in args.inputs], Path(args.out), Path(args.out_csv))
    elif args.what == "loss-figure":
        from cmim.report import figures

        figures.loss_curves([Path(p) for p in args.inputs], Path(args.out))
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(s):
        s.add_argument("--configfile", nargs="+", default=["config.yaml"], help="config files, merged left to right")
        s.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                       help="overrides, e.g. runs.mae.epochs=2")

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
    s.add_argument("--launch", default='{"launcher": "inprocess"}', help="JSON of the config's launch block")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("linear-probe", help="linear probe of a run's frozen encoder")
    for a in ("--run-config", "--checkpoint", "--train-manifest", "--val-manifest", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--options", required=True, help="JSON of evaluations.linear_probe")
    s.add_argument("--data", required=True, help="JSON: mean, std, image_size, eval_crop_pct, dataset")
    s.set_defaults(fn=cmd_linear_probe)

    s = sub.add_parser("report", help="tables and figures")
    s.add_argument("what", choices=["probe-table", "loss-figure"])
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--out-csv")
    s.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
