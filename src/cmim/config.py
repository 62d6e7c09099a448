"""The study configuration: load config files, validate them against the one schema, fill defaults,
expand seeds, and check every rule that spans keys.

Why one place: the Snakefile and `python -m cmim` must agree on what a config means, and a typo must
fail before any job starts with the key path and a suggestion. The schema walk is cmim.config_schema,
what a validated study says (resolved runs, results) cmim.study, the rules of single option blocks
cmim.options; the `tables:` / `figures:` blocks are checked by cmim.workflow.load (cmim.report.specs).
No torch, so a bad key fails in well under a second.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

from cmim.config_schema import (
    block_problems,
    coerce,
    deep_merge,
    definition,
    fill_defaults,
    load_yaml,
    parse_override,
    schema,
    schema_problems,
)
from cmim.errors import ConfigError
from cmim.options import SELECTION_KEYS, from_dict
from cmim.options.checkpoint import CheckpointOptions
from cmim.options.evals import TASK_OPTIONS
from cmim.options.methods import METHOD_OPTIONS, AugmentOptions
from cmim.study import (
    BASELINE_METHODS,
    DENSE_FORMATS,
    DENSE_TASKS,
    IMPORTED,
    METHOD_OPTION_KEYS,
    NEEDS_ENCODER,
    dense_dataset,
    encoder_spec,
    eval_options,
    evaluated_runs,
    expand_names,
    expand_seeds,
    resolve_run,
    run_method,
    run_options,
)


def load_config(paths: list[str | Path], overrides: list[str] = ()) -> dict:
    """Merge config files left to right, then `key.path=value` overrides, then validate."""
    raw: dict = {}
    for p in paths:
        raw = deep_merge(raw, load_yaml(p))
    for item in overrides:
        raw = deep_merge(raw, parse_override(item))
    source = ", ".join(str(p) for p in paths) or "config"
    return validate(raw, source=source)

def validate(raw: dict, source: str = "config") -> dict:
    """Schema check (all problems at once), then defaults, then cross-key checks. Returns a new dict."""
    root = schema()
    raw = {k: v for k, v in raw.items() if k != "run_groups"}  # recomputed below (a config validated twice)
    raw = coerce(raw, root, root)
    lines = schema_problems(raw)
    if lines:
        raise ConfigError(f"{source}: {len(lines)} problem(s):\n  - " + "\n  - ".join(lines))
    # Runs stay as written: their defaults are filled only after run_defaults are merged under
    # them (run_options), or a filled default would hide the run_defaults value.
    config = copy.deepcopy(raw)
    runs, run_defaults = config.pop("runs"), config.pop("run_defaults", {})
    config = fill_defaults(config, root, root)
    config["run_defaults"] = {k: v for k, v in run_defaults.items() if k != "seeds"}
    try:
        config["runs"], config["run_groups"] = expand_seeds(runs, run_defaults.get("seeds"))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    for spec in config["evaluations"].values():
        if isinstance(spec.get("runs"), list):
            spec["runs"] = expand_names(spec["runs"], config["run_groups"])
        if spec.get("per_run"):
            spec["per_run"] = {m: own for name, own in spec["per_run"].items()
                               for m in config["run_groups"].get(name, [name])}
    if isinstance(config["report"].get("loss_curve_runs"), list):
        config["report"]["loss_curve_runs"] = expand_names(config["report"]["loss_curve_runs"], config["run_groups"])
    problems = _check_semantics(config, raw)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return config

# Formats read from a folder the user names: their root is required (fashion-mnist searches its
# default places; demo formats are generated under results/demo/).
ROOT_LAYOUT = {"imagefolder": "<root>/<split>/<class>/<image>",
               "ade20k": "<root>/ADEChallengeData2016/{images,annotations}/<split>/",
               "coco": "<root>/{train2017,val2017}/ + <root>/annotations/instances_<split>.json"}


def warnings(config: dict) -> list[str]:
    """What `validate` and the Snakefile say about a valid config without failing it: a dataset root
    that does not exist, or is no folder, on this machine, or an imported run's weights file not here
    (yet). Only warnings: on a cluster the data may be mounted only on the compute nodes that run the
    shard jobs, and a study is often written before its weights are downloaded (the import job's
    input check names the file again when it is needed)."""
    out = []
    for name in config["runs"]:
        run = resolve_run(config, name)
        path = (run.get("checkpoint") or {}).get("path")
        if run["method"] == IMPORTED and path and not Path(path).expanduser().exists():
            out.append(f"runs.{name}.checkpoint.path: {path} does not exist on this machine (yet); the import "
                       f"job of {name} needs it")
    for name, ds in config["datasets"].items():
        root = ds.get("root")
        if not root or ds["format"].startswith("demo-"):
            continue
        path = Path(root).expanduser()
        if not path.exists():
            out.append(f"datasets.{name}.root: {root} does not exist on this machine; if it exists only where the "
                       f"jobs run (a compute node's mount), carry on, otherwise fix the path: the shard job of "
                       f"{name} would fail on it")
        elif not path.is_dir():
            out.append(f"datasets.{name}.root: {root} is a file, not a folder; the shard job of {name} reads a "
                       f"folder ({ROOT_LAYOUT.get(ds['format'], 'the IDX .gz files')})")
    return out


def _check_semantics(config: dict, raw: dict) -> list[str]:
    problems: list[str] = []
    datasets = config["datasets"]
    for name, ds in datasets.items():
        where = f"datasets.{name}"
        if ds["format"] in ROOT_LAYOUT and not ds.get("root"):
            problems.append(f"{where}.root: a dataset of format {ds['format']} needs the folder of its source "
                            f"({ROOT_LAYOUT[ds['format']]}); set it")
        if "demo" in raw["datasets"][name] and not ds["format"].startswith("demo-"):
            problems.append(f"{where}.demo: only demo-ade20k / demo-coco datasets take demo options "
                            f"(format is {ds['format']}); remove the key")
    for run_id in config["runs"]:
        problems += _check_run(config, run_id)
    for task, spec in config["evaluations"].items():
        problems += _check_task(config, task, spec)
    report_runs = config["report"]["loss_curve_runs"]
    if report_runs != "all":
        problems += [f"report.loss_curve_runs: unknown run '{r}'" for r in report_runs
                     if r not in config["runs"]]
    launch = config["launch"]
    if launch["launcher"] != "slurm" and launch["nodes"] > 1:
        problems.append(f"launch.nodes: {launch['nodes']} nodes need launcher: slurm "
                        f"(got {launch['launcher']})")
    return problems

def _check_task(config: dict, task: str, spec: dict) -> list[str]:
    where = f"evaluations.{task}"
    problems = []
    if spec.get("runs") != "all":
        for run_id in spec.get("runs", []):
            if run_id not in config["runs"]:
                problems.append(f"{where}.runs: unknown run '{run_id}'; runs: {sorted(config['runs'])}")
            elif task in NEEDS_ENCODER and run_method(config, run_id) == "raw_pixels":
                problems.append(f"{where}.runs: '{run_id}' is the raw_pixels baseline, which has no encoder to "
                                f"{task.replace('_', ' ')}; remove it from the list")
    if spec.get("dataset") is not None and spec["dataset"] not in config["datasets"]:
        problems.append(f"{where}.dataset: unknown dataset '{spec['dataset']}'; datasets: {sorted(config['datasets'])}")
    elif task in DENSE_TASKS:
        name = dense_dataset(config, task)
        formats = " or ".join(DENSE_FORMATS[task])
        if name is None:
            problems.append(f"{where}.dataset: name the {formats} dataset to evaluate on (the study has "
                            f"{'none' if spec.get('dataset') is None else 'several'} of that format)")
        elif config["datasets"][name]["format"] not in DENSE_FORMATS[task]:
            problems.append(f"{where}.dataset: '{name}' is a {config['datasets'][name]['format']} dataset; "
                            f"{task} needs {formats}")
    task_schema = definition(task)
    for run_id, own in spec.get("per_run", {}).items():
        if run_id not in config["runs"]:
            problems.append(f"{where}.per_run: unknown run '{run_id}'; runs: {sorted(config['runs'])}")
            continue
        for key in own:
            if key in ("runs", "per_run", "dataset") or key not in task_schema["properties"]:
                allowed = sorted(set(task_schema["properties"]) - {"runs", "per_run", "dataset"})
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                problems.append(f"{where}.per_run.{run_id}.{key}: not a key that can differ per run"
                                + (f" (did you mean '{hint[0]}'?)" if hint else "")
                                + f"; allowed: {', '.join(allowed)}")
        problems += block_problems({k: v for k, v in own.items() if k in task_schema["properties"]}, task,
                                   f"{where}.per_run.{run_id}")
    if not problems:  # the protocol's own rules, for each run it covers (per_run keys applied)
        for run_id in evaluated_runs(config, task):
            try:
                from_dict(TASK_OPTIONS[task], eval_options(config, task, run_id), where, ignore=SELECTION_KEYS)
            except ConfigError as e:
                problems.append(f"{e} (run '{run_id}')" if spec.get("per_run") else str(e))
                break
    if task == "partial_finetune":
        for run_id in evaluated_runs(config, task):
            if run_id not in config["runs"]:
                continue
            depth = encoder_spec(run_options(config, run_id), 1)["depth"]
            too_deep = [k for k in eval_options(config, task, run_id)["blocks"] if k > depth]
            if too_deep:
                problems.append(f"{where}.blocks: {too_deep} exceed the depth of run '{run_id}' ({depth} blocks); "
                                f"k counts the last blocks that train, so k <= {depth}")
    return problems

def _check_run(config: dict, run_id: str) -> list[str]:
    where = f"runs.{run_id}"
    raw = deep_merge(config.get("run_defaults", {}), config["runs"][run_id])
    problems = []
    for key in ("method", "dataset"):
        if key not in raw:
            problems.append(f"{where}: missing required key '{key}' (set it in the run or in run_defaults)")
    if problems:
        return problems
    method = raw["method"]
    if raw["dataset"] not in config["datasets"]:
        hint = difflib.get_close_matches(raw["dataset"], list(config["datasets"]), n=1)
        problems.append(f"{where}.dataset: unknown dataset '{raw['dataset']}'"
                        + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; datasets: {sorted(config['datasets'])}")
        return problems
    own = config["runs"][run_id]
    for other in METHOD_OPTION_KEYS:
        if other != method and other in own:
            problems.append(f"{where}.{other}: options for method '{other}' in a '{method}' run; "
                            f"remove them or set method: {other}")
    run = run_options(config, run_id)
    dataset = config["datasets"][run["dataset"]]
    image_size, patch = dataset["image_size"], run["patch_size"]
    if image_size % patch:
        problems.append(f"{where}.patch_size: {patch} does not divide the image size {image_size} "
                        f"(datasets.{run['dataset']}.image_size)")
        return problems
    spec = encoder_spec(run, image_size)
    if spec["embed_dim"] % spec["num_heads"]:
        problems.append(f"{where}: embed_dim {spec['embed_dim']} is not divisible by num_heads "
                        f"{spec['num_heads']}")
    if "checkpoint" in raw and method != IMPORTED:
        problems.append(f"{where}.checkpoint: only an imported run reads its weights from a file (this run's "
                        f"method is {method}); remove the block or set method: {IMPORTED}")
    if method == IMPORTED:
        return problems + _check_imported(run, own, where)
    if method in BASELINE_METHODS:
        if own.get("epochs", 0) not in (0, None) and "epochs" in own:
            problems.append(f"{where}.epochs: a {method} baseline is not trained; set epochs: 0 or drop it")
        return problems
    if run["epochs"] < 1:
        problems.append(f"{where}.epochs: a {method} run needs epochs >= 1")
    if run["warmup_epochs"] >= max(run["epochs"], 1):
        problems.append(f"{where}.warmup_epochs: {run['warmup_epochs']} must be below epochs "
                        f"({run['epochs']}); scale warmup down for short runs")
    late = [e for e in run["checkpoint_epochs"] if e > run["epochs"]]
    if late:
        problems.append(f"{where}.checkpoint_epochs: {late} are beyond epochs ({run['epochs']})")
    try:  # the method's own rules (cmim.options.methods), written once
        opts = from_dict(METHOD_OPTIONS[method], run.get(method, {}), f"{where}.{method}")
        from_dict(AugmentOptions, run.get("augment", {}), f"{where}.augment")
    except ConfigError as e:
        problems.append(str(e))
    else:
        grid = image_size // patch
        problems += [f"{where}.{method}.{key}: {message}" for key, message in opts.grid_problems(grid)]
    if run["batch_size"] % run["accum_steps"]:
        problems.append(f"{where}.batch_size: {run['batch_size']} is not divisible by accum_steps "
                        f"{run['accum_steps']}")
    return problems


def _check_imported(run: dict, own: dict, where: str) -> list[str]:
    """An imported run names its weights file; it has no epoch checkpoints. (A file that is not on this
    machine yet only warns: `warnings`.)"""
    if "checkpoint" not in run or not run["checkpoint"].get("path"):
        return [f"{where}.checkpoint.path: an imported run needs the file of its weights (e.g. checkpoint: "
                f"{{path: checkpoints/mae_pretrain_vit_base.pth, format: auto}})"]
    problems = []
    if own.get("checkpoint_epochs"):
        problems.append(f"{where}.checkpoint_epochs: an imported run has only the file's weights, no epoch "
                        f"checkpoints; remove the key")
    try:
        from_dict(CheckpointOptions, run["checkpoint"], f"{where}.checkpoint")
    except ConfigError as e:
        return [*problems, str(e)]
    return problems

