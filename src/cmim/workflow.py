"""What the Snakefile asks of the config: targets, inputs and params, as plain tested functions.

Why not in .smk files: logic there is untestable and grows without bound (STYLE.md 7); the rules
stay declarative and every path comes from cmim.paths.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cmim import paths, study
from cmim.config import load_config, validate
from cmim.config_schema import load_yaml
from cmim.datasets import DEMO_TREE, is_demo, reader_format, splits
from cmim.errors import ConfigError
from cmim.report import spec_checks
from cmim.report import targets as report_targets


def checked(config: dict, source: str) -> dict:
    """A validated config whose `tables:` / `figures:` blocks also name real runs, rows and metrics."""
    problems = spec_checks.check(config)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return config


def load(config: dict) -> dict:
    """The Snakefile's config, validated with defaults filled in and its report blocks checked
    (raises cmim.errors.ConfigError naming every offending key)."""
    return checked(validate(config, source="config"), "config")


def check_config_files(files) -> None:
    """Parse each config file with cmim's YAML loader (ConfigError naming the file, line and column).
    The Snakefile runs it on config.yaml before its `configfile:` directive, whose own loader says
    only "Config file is not valid JSON or YAML". Files given with --configfile cannot be checked
    here: Snakemake parses them in its command line, before any workflow code runs (README, *When
    things go wrong*)."""
    for path in files:
        load_yaml(path)


def load_files(files: list[str | Path], overrides: list[str] = ()) -> dict:
    """`python -m cmim validate`: the same checks as the Snakefile, from config files and overrides."""
    return checked(load_config(files, overrides), ", ".join(str(f) for f in files) or "config")


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def alternation(names) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "^$"


# ----------------------------------------------------------------------------- datasets


def source_root(cfg: dict, dataset: str) -> str:
    """Where the shard rule reads: the generated tree for demo data, else the configured root."""
    ds = cfg["datasets"][dataset]
    if is_demo(cfg, dataset):
        return str(paths.demo_root(dataset) / DEMO_TREE[ds["format"]])
    return ds["root"] or "auto"  # fashion-mnist then searches its default locations


def shard_inputs(cfg: dict, dataset: str) -> list[str]:
    """Generated demo trees are rule outputs; real source trees are not tracked (millions of files)."""
    return [str(paths.demo_done(dataset))] if is_demo(cfg, dataset) else []


def shard_params(cfg: dict, dataset: str, split: str) -> dict:
    ds = cfg["datasets"][dataset]
    options = {k: ds[k] for k in ("max_samples", "shard_max_count", "shard_max_bytes", "max_bad_fraction",
                                  "resize_short_side")}
    options["seed"] = cfg["seed"]
    return {"format": reader_format(ds["format"]), "root": source_root(cfg, dataset),
            "source_split": splits(cfg, dataset)[split], "options": _json(options)}


def shard_threads(cfg: dict, dataset: str, cores: int) -> int:
    """Cores (and worker processes) of a shard job: datasets.<d>.shard_workers, auto = all `cores`."""
    workers = cfg["datasets"][dataset].get("shard_workers", "auto")
    return cores if workers == "auto" else int(workers)


def demo_options(cfg: dict, dataset: str) -> str:
    return _json(cfg["datasets"][dataset]["demo"])


def all_manifests(cfg: dict) -> list[str]:
    return [str(paths.manifest(d, s)) for d in cfg["datasets"] for s in splits(cfg, d)]


# ----------------------------------------------------------------------------- runs


def resolved_run_text(cfg: dict, run: str) -> str:
    """The run's config as stable text: a change reruns exactly the jobs downstream of this run."""
    return _json(study.resolve_run(cfg, run))


def pretrain_inputs(cfg: dict, run: str) -> dict[str, str]:
    """The run's config and train manifest, and its dataset's val manifest where there is one: the
    online kNN monitor's queries (an input, so the val shards exist before the first epoch ends)."""
    dataset = study.resolve_run(cfg, run)["dataset"]
    inputs = {"run_config": str(paths.run_files(run).config), "manifest": str(paths.manifest(dataset, "train"))}
    if "val" in splits(cfg, dataset):
        inputs["val_manifest"] = str(paths.manifest(dataset, "val"))
    return inputs


def monitor_args(inputs) -> str:
    """The pretrain command's monitor argument: the val manifest, if the dataset has a val split."""
    return f"--val-manifest {inputs.val_manifest}" if "val_manifest" in inputs.keys() else ""


def baseline_runs(cfg: dict) -> list[str]:
    """Runs with nothing to train (random_init, raw_pixels): their encoder is written in seconds."""
    return [r for r in cfg["runs"] if study.run_method(cfg, r) in study.BASELINE_METHODS]


def imported_runs(cfg: dict) -> list[str]:
    """Runs whose encoder is read from a weights file (rule import_checkpoint), never pretrained."""
    return [r for r in cfg["runs"] if study.run_method(cfg, r) == study.IMPORTED]


def trained_runs(cfg: dict) -> list[str]:
    return [r for r in cfg["runs"] if study.run_method(cfg, r) not in study.UNTRAINED_METHODS]


def import_source(cfg: dict, run: str) -> str:
    """The weights file of an imported run: the import job's input, so a changed file re-imports."""
    return study.resolve_run(cfg, run)["checkpoint"]["path"]


def pretrain_threads(cfg: dict) -> int:
    """Cores a training job occupies on this machine (all its local processes)."""
    launch = cfg["launch"]
    return launch["cpus_per_task"] * (launch["tasks_per_node"] or max(1, launch["gpus_per_node"]))


def frozen_eval_threads(cfg: dict) -> int:
    """Cores a frozen evaluation (features, linear probe) occupies: one process of `cpus_per_task`
    threads and loader workers together (cli._cpu_job, launch.default_num_workers). Asking Snakemake for
    more only keeps the other cores idle: the demo's 22 such jobs once ran one at a time on 2 cores."""
    return cfg["launch"]["cpus_per_task"]


def pretrain_resources(cfg: dict) -> dict:
    """Resources for Snakemake's SLURM executor (profiles/slurm), from the launch block.

    One task per job: the `local` launcher starts the per-GPU processes inside the allocation.
    Unset keys are left out, so the profile's defaults apply (the executor would pass empty values).
    """
    launch = cfg["launch"]
    res = {"runtime": launch["timeout_min"], "cpus_per_task": pretrain_threads(cfg)}
    if launch["gpus_per_node"]:
        res["gpu"] = launch["gpus_per_node"]
    if launch["mem_gb"] is not None:
        res["mem_mb"] = int(launch["mem_gb"] * 1024)
    names = {"partition": "slurm_partition", "account": "slurm_account", "qos": "qos", "constraint": "constraint"}
    res.update({names[k]: launch[k] for k in names if launch[k]})
    return res


def pretrain_is_local_rule(cfg: dict) -> bool:
    """A submitit SLURM launch only submits and waits: it runs on the login node, never inside a job."""
    return cfg["launch"]["launcher"] == "slurm"


# ----------------------------------------------------------------------------- launch


def launch_env(cfg: dict) -> str:
    """The launch block for CMIM_LAUNCH: jobs read where and how fast to run from the environment,
    so none of it is a tracked param (changing it never reruns a finished job)."""
    return _json(cfg["launch"])


def monitor_env(cfg: dict) -> str:
    """The monitor block and the study's kNN protocol (k, temperature) for CMIM_MONITOR: like the launch
    block, it reaches the pretraining jobs through the environment, so changing it retrains nothing."""
    knn = cfg["evaluations"].get("knn", {})
    return _json({**cfg["monitor"], "knn": {k: knn[k] for k in ("k", "temperature") if k in knn}})


def verify_env(cfg: dict) -> str:
    """dataset -> verify its shards' sha256 before a job reads them (CMIM_VERIFY_SHARDS): a safety
    check, not part of any result, so switching it never reruns anything either."""
    return _json({name: ds.get("verify_shards", True) for name, ds in cfg["datasets"].items()})


# ----------------------------------------------------------------------------- evaluations


def eval_dataset(cfg: dict, task: str, run: str) -> str:
    if task in study.DENSE_TASKS:
        return study.dense_dataset(cfg, task)
    spec = cfg["evaluations"][task]
    return spec.get("dataset") or study.resolve_run(cfg, run)["dataset"]


def data_json(cfg: dict, dataset: str) -> str:
    """What an evaluation needs to know of its dataset's images (normalisation, sizes)."""
    ds = cfg["datasets"][dataset]
    return _json({"dataset": dataset, "mean": ds["mean"], "std": ds["std"], "image_size": ds["image_size"],
                  "eval_crop_pct": ds["eval_crop_pct"]})


def checkpoint_of(run: str, ckpt: str) -> str:
    """ckpt 'final' = the run's checkpoint.pt; 'ep<E>' = its epoch-E export (rule epoch_checkpoint)."""
    files = paths.run_files(run)
    return str(files.checkpoint if ckpt == "final" else files.epoch_checkpoint(int(ckpt[2:])))


def features_file(cfg: dict, task: str, run: str, epoch: int | None = None) -> str:
    return str(paths.features(run, eval_dataset(cfg, task, run), "final" if epoch is None else f"ep{epoch}"))


def features_inputs(cfg: dict, run: str, dataset: str, ckpt: str) -> dict[str, str]:
    return {"run_config": str(paths.run_files(run).config), "checkpoint": checkpoint_of(run, ckpt),
            "train": str(paths.manifest(dataset, "train")), "val": str(paths.manifest(dataset, "val"))}


def features_options(cfg: dict) -> str:
    return _json(cfg["features"])



def probe_inputs(cfg: dict, run: str, epoch: int | None = None) -> dict[str, str]:
    """cached: the features file; augmented: the checkpoint and the dataset's manifests."""
    spec = cfg["evaluations"]["linear_probe"]
    inputs = {"run_config": str(paths.run_files(run).config)}
    if spec["features"] == "cached":
        inputs["features"] = features_file(cfg, "linear_probe", run, epoch)
    else:
        ds = eval_dataset(cfg, "linear_probe", run)
        inputs.update(checkpoint=checkpoint_of(run, "final" if epoch is None else f"ep{epoch}"),
                      train=str(paths.manifest(ds, "train")), val=str(paths.manifest(ds, "val")))
    return inputs


def probe_args(inputs) -> str:
    """The linear-probe command's input arguments for either mode."""
    if "features" in inputs.keys():
        return f"--features {inputs.features}"
    return f"--checkpoint {inputs.checkpoint} --train-manifest {inputs.train} --val-manifest {inputs.val}"


def knn_inputs(cfg: dict, run: str, epoch: int | None = None) -> dict[str, str]:
    return {"run_config": str(paths.run_files(run).config), "features": features_file(cfg, "knn", run, epoch)}


def task_options(cfg: dict, task: str, run: str) -> str:
    """This run's protocol of a task (per_run keys applied): a change reruns exactly this evaluation."""
    return _json(study.eval_options(cfg, task, run))


def train_eval_inputs(cfg: dict, task: str, run: str) -> dict[str, str]:
    ds = eval_dataset(cfg, task, run)
    files = paths.run_files(run)
    return {"run_config": str(files.config), "checkpoint": str(files.checkpoint),
            "train": str(paths.manifest(ds, "train")), "val": str(paths.manifest(ds, "val"))}


def coco_val_json(cfg: dict, run: str) -> str:
    """The real instances_<val split>.json AP is scored against (in the generated tree for demo-coco):
    a source the val shards were built from, so a param, not a tracked input."""
    dataset = eval_dataset(cfg, "coco", run)
    split = splits(cfg, dataset)["val"]
    return f"{source_root(cfg, dataset)}/annotations/instances_{split}.json"


def dense_data(cfg: dict, task: str, run: str) -> str:
    return data_json(cfg, eval_dataset(cfg, task, run))


def trained_eval_is_local_rule(cfg: dict) -> bool:
    return pretrain_is_local_rule(cfg)


def task_results(cfg: dict, task: str, epochs: bool = False) -> list[str]:
    """Result files of a task over its runs; with `epochs` also the epoch-checkpoint results."""
    out = []
    for run in study.evaluated_runs(cfg, task):
        names = study.result_names(cfg, task, run)
        if not epochs and task != "partial_finetune":
            names = names[:1]
        out += [str(paths.eval_result(run, n)) for n in names]
    return out


def probe_results(cfg: dict) -> list[str]:
    return task_results(cfg, "linear_probe")


def epochs_figure_inputs(cfg: dict) -> list[str]:
    """Every epoch-checkpoint result and final result of the frozen tasks that evaluate epochs."""
    out = []
    for task in ("knn", "linear_probe"):
        if cfg["evaluations"].get(task, {}).get("on_checkpoint_epochs"):
            out += task_results(cfg, task, epochs=True)
    return out


def loss_curve_inputs(cfg: dict) -> list[str]:
    runs = cfg["report"]["loss_curve_runs"]
    runs = list(cfg["runs"]) if runs == "all" else runs
    return [str(paths.run_files(r).metrics) for r in runs]


EVAL_TABLES = ("knn", "finetune", "partial_finetune", "ade20k", "coco")


def all_targets(cfg: dict) -> list[str]:
    targets = all_manifests(cfg)
    targets += [str(paths.run_files(r).checkpoint) for r in cfg["runs"]]
    evaluations = cfg["evaluations"]
    if "linear_probe" in evaluations:
        targets += [str(paths.table("linear_probe", ext)) for ext in ("md", "csv", "html")]
    for task in EVAL_TABLES:
        if task in evaluations and study.evaluated_runs(cfg, task):
            targets += [str(paths.table(task, ext)) for ext in ("md", "csv", "html")]
    for task in study.DENSE_TASKS:
        if task in evaluations:
            targets += [str(paths.eval_examples(r, task)) for r in study.evaluated_runs(cfg, task)]
    if epochs_figure_inputs(cfg):
        targets.append(str(paths.figure("accuracy_vs_epochs")))
    if "partial_finetune" in evaluations and study.evaluated_runs(cfg, "partial_finetune"):
        targets.append(str(paths.figure("partial_finetune")))
    targets.append(str(paths.figure("pretrain_loss")))
    targets += report_targets.all_report_targets(cfg)
    return targets
