"""`python -m cmim plan`: what a study costs, job by job, before it is submitted.

For every job the Snakefile would run (the pretraining of each trained run and its online kNN monitor,
listed apart; for each evaluated run the frozen features, linear probe, kNN, finetune, partial
finetunes, ADE20K and COCO), it gives the images processed, the FLOPs (cmim.train.flops' analytic
model: forward 24 d^2 n + 4 n^2 d per ViT block, training 3x forward, EMA target 1x), and the
GPU-hours from, in this order of preference:
  1. a measured img/s of the same step and model on that GPU (benchmarks/results/*.json written by
     `cmim bench --size paper` on a GPU, same FLOPs per image within 1%);
  2. the MFU measured there for the same kind of step, applied to this job's FLOPs;
  3. an assumed MFU (--mfu, default 0.30: the team's compiled H100 reference steps ran at 27-35%).
Each row says which. Wall-clock hours assume linear scaling on the study's GPU count (launch:
nodes x gpus_per_node). Dataset sizes come from the shard manifests when they exist, else from the
known sizes of ImageNet-1K, Fashion-MNIST, ADE20K, COCO and the demo scenes, else --samples.

ADE20K and COCO count the backbone only (UperNet / Mask R-CNN heads are not modelled) at the
reference recipes' schedules unless the task's per_run block sets iters / batch_size / crop_size:
mmseg's MAE ViT-B UperNet (160k iters x 16 at 512 px) and ViTDet-B (184,375 iters x 64 at 1024 px,
window attention 14 with 4 global blocks).
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from cmim.config import load_config
from cmim.datasets import split_info
from cmim.options import SELECTION_KEYS, from_dict
from cmim.options.evals import TASK_OPTIONS
from cmim.options.monitor import MonitorOptions
from cmim.study import UNTRAINED_METHODS, dense_dataset, eval_options, evaluated_runs, resolve_run, run_method
from cmim.train.schedule import steps_per_epoch

DEFAULT_GPU = "H100"
DEFAULT_MFU = 0.30
MEASURED_MATCH = 0.01   # a measurement applies when its FLOPs/img are within 1% of the job's

# Dense tasks: the reference recipes (METHODS.md 2.3 / 2.4) when the config does not say otherwise.
DENSE_RECIPES = {"ade20k": {"iters": 160_000, "batch_size": 16, "crop_size": 512, "window": None},
                 "coco": {"iters": 184_375, "batch_size": 64, "crop_size": 1024, "window": 14, "global_blocks": 4}}


@dataclass
class Job:
    job: str                   # pretrain / features / linear_probe / knn / finetune / partial_finetune-k<K> / ...
    run: str
    images: int                # images through the network (training: steps x global batch)
    gflop_per_image: float
    gflop: float               # total
    img_per_s_per_gpu: float | None
    source: str                # where the speed comes from
    gpu_hours: float | None
    wall_hours: float | None   # on the study's GPUs, linear scaling


# ----------------------------------------------------------------------------- speeds


def load_measurements(results_dir: Path, gpu: str) -> list[dict]:
    """cmim rows of `cmim bench` GPU files whose device name contains `gpu`, newest first."""
    rows = []
    for path in sorted(glob.glob(str(results_dir / "*.json")), reverse=True):
        try:
            blob = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        meta = blob.get("meta", {})
        if meta.get("device_type") != "cuda" or gpu.lower() not in meta.get("device", "").lower():
            continue
        for r in blob.get("rows", []):
            if r.get("impl") == "cmim":
                rows.append({**r, "file": Path(path).name, "compile": meta.get("compile")})
    return rows


class Speeds:
    """img/s per GPU for a (kind of step, FLOPs per image), with the source said."""

    def __init__(self, measurements: list[dict], gpu: str, mfu: float, compile: str | None = None) -> None:
        from cmim.train import flops

        self.rows, self.mfu, self.compile = measurements, mfu, compile
        self.peak = next((v for k, v in flops.PEAK_BF16_FLOPS.items() if k.lower() in gpu.lower()), None)
        if self.peak is None:
            raise ValueError(f"unknown GPU {gpu!r}: its bf16 peak is not in cmim.train.flops.PEAK_BF16_FLOPS "
                             f"({sorted(flops.PEAK_BF16_FLOPS)})")
        self.gpu = gpu

    def _pick(self, step: str) -> list[dict]:
        rows = [r for r in self.rows if r["step"] == step]
        same = [r for r in rows if r.get("compile") == self.compile]
        return same or rows

    def of(self, step: str | None, flop_per_image: float) -> tuple[float, str]:
        rows = self._pick(step) if step else []
        for r in rows:
            if abs(r["gflop_per_img"] * 1e9 - flop_per_image) <= MEASURED_MATCH * flop_per_image:
                return r["img_per_s"], f"measured ({r['file']})"
        if rows and rows[0].get("mfu_vs_bf16_peak"):
            m = rows[0]["mfu_vs_bf16_peak"]
            return m * self.peak / flop_per_image, f"FLOP model at {step}'s measured MFU {m:.1%} ({rows[0]['file']})"
        return self.mfu * self.peak / flop_per_image, f"FLOP model at an assumed MFU of {self.mfu:.0%}"


# ----------------------------------------------------------------------------- jobs


def _train_images(epochs: int, samples: int, batch: int) -> int:
    return epochs * steps_per_epoch(samples, batch) * batch


def _job(kind: str, run: str, images: int, flop_per_image: float, speed, gpus: int, step: str | None = None,
         extra_gflop: float = 0.0) -> Job:
    total = images * flop_per_image + extra_gflop * 1e9
    if images:
        img_s, source = speed.of(step, flop_per_image)
        gpu_h = images / img_s / 3600
    else:   # no images (kNN): its FLOPs at the assumed MFU
        img_s, source = None, f"FLOP model at an assumed MFU of {speed.mfu:.0%}"
        gpu_h = total / (speed.mfu * speed.peak) / 3600
    return Job(kind, run, images, flop_per_image / 1e9, total / 1e9, img_s, source, gpu_h, gpu_h / max(gpus, 1))


def _eval_spec(run: dict, config: dict, dataset: str) -> dict:
    size = config["datasets"][dataset]["image_size"]
    return dict(run["encoder"], img_size=size)


def pretrain_job(config: dict, run_id: str, speed, gpus: int, samples) -> Job:
    from cmim.train import flops

    run = _resolved(config, run_id)
    n = run["samples_per_epoch"] or split_info(config, run["dataset"], "train", samples)[0]
    work = flops.method_flops(run, negatives=run["batch_size"])
    if run.get("iters"):
        images = run["iters"] * run["batch_size"]
    else:
        images = _train_images(run["epochs"], n, run["batch_size"])
    return _job("pretrain", run_id, images, work.train(), speed, gpus, step=run["method"])


def _resolved(config: dict, run_id: str) -> dict:
    """study.resolve_run, once per run of a plan (it re-reads the schema on every call)."""
    cache = config.setdefault("_plan_resolved", {})
    if run_id not in cache:
        cache[run_id] = resolve_run({k: v for k, v in config.items() if k != "_plan_resolved"}, run_id)
    return cache[run_id]


def _eval_dataset(config: dict, task: str, run: dict) -> str:
    """As cmim.workflow.eval_dataset: the task's dataset, else the run's (dense: the study's one)."""
    if task in DENSE_RECIPES:
        return dense_dataset(config, task)
    return config["evaluations"][task].get("dataset") or run["dataset"]


def _checkpoints(run: dict, on_epochs: bool) -> list[str]:
    """'final' + the epoch checkpoints evaluated on their own (as cmim.study.checkpoint_epochs)."""
    epochs = sorted(e for e in set(run["checkpoint_epochs"]) if e != run["epochs"])
    return ["final"] + ([f"ep{e}" for e in epochs] if on_epochs and run["method"] not in UNTRAINED_METHODS else [])


def frozen_jobs(config: dict, speed, gpus: int, samples) -> list[Job]:
    """Features (shared by kNN and the cached probe, once per run, dataset and checkpoint), probes, kNN."""
    from cmim.train import flops

    jobs, seen = [], set()
    fcfg = config.get("features", {})
    for task in ("linear_probe", "knn"):
        spec = config["evaluations"].get(task)
        if spec is None:
            continue
        for run_id in evaluated_runs(config, task):
            if run_method(config, run_id) == "raw_pixels":
                continue
            run = _resolved(config, run_id)
            dataset = _eval_dataset(config, task, run)
            fwd = flops.encoder_flops(_eval_spec(run, config, dataset)).forward()
            n_train, _ = split_info(config, dataset, "train", samples)
            n_val, _ = split_info(config, dataset, "val", samples)
            for ckpt in _checkpoints(run, spec.get("on_checkpoint_epochs", False)):
                name = task if ckpt == "final" else f"{task}-{ckpt}"
                cached = task == "knn" or spec.get("features") == "cached"
                tr = min(n_train, fcfg.get("max_train_samples") or n_train)
                va = min(n_val, fcfg.get("max_val_samples") or n_val)
                if cached and (run_id, dataset, ckpt) not in seen:
                    seen.add((run_id, dataset, ckpt))
                    jobs.append(_job(f"features-{ckpt}", run_id, tr + va, fwd, speed, gpus))
                if task == "knn":
                    d = run["encoder"]["embed_dim"]
                    jobs.append(_job(name, run_id, 0, 0.0, speed, gpus, extra_gflop=2 * tr * va * d / 1e9))
                elif not cached:
                    n = min(n_train, spec.get("max_train_samples") or n_train)
                    batch = min(spec["batch_size"], n)
                    images = spec["epochs"] * max(1, n // batch) * batch
                    val = min(n_val, spec.get("max_val_samples") or n_val)
                    jobs.append(_job(name, run_id, images + val, fwd, speed, gpus))
    return jobs


def monitor_jobs(config: dict, speed, gpus: int, samples) -> list[Job]:
    """The online kNN monitor of each trained run on a labelled dataset: at each monitored epoch, the
    forward of its train and val subsets and the kNN's similarity matrix (cmim.tasks.monitor)."""
    from cmim.train import flops

    opts = from_dict(MonitorOptions, config.get("monitor", {}), "monitor")
    jobs = []
    for run_id in config["runs"]:
        run = _resolved(config, run_id)
        n_train, classes = split_info(config, run["dataset"], "train", samples)
        checks = len(opts.epochs(run["epochs"])) if run["method"] not in UNTRAINED_METHODS else 0
        if not checks or (classes or 0) < 2:
            continue
        tr = min(n_train, opts.train_samples)
        va = min(split_info(config, run["dataset"], "val", samples)[0], opts.val_samples)
        fwd = flops.encoder_flops(_eval_spec(run, config, run["dataset"])).forward()
        job = _job("monitor", run_id, checks * (tr + va), fwd, speed, gpus,
                   extra_gflop=checks * 2 * tr * va * run["encoder"]["embed_dim"] / 1e9)
        job.source += f"; {checks} checks of {tr:,} + {va:,} images"
        jobs.append(job)
    return jobs


def finetune_jobs(config: dict, task: str, speed, gpus: int, samples) -> list[Job]:
    from cmim.train import flops

    jobs = []
    if task not in config["evaluations"]:
        return jobs
    for run_id in evaluated_runs(config, task):
        run = _resolved(config, run_id)
        opts = from_dict(TASK_OPTIONS[task], eval_options(config, task, run_id), f"evaluations.{task}",
                         ignore=SELECTION_KEYS)
        dataset = _eval_dataset(config, task, run)
        n_train, classes = split_info(config, dataset, "train", samples)
        n_val, _ = split_info(config, dataset, "val", samples)
        spec = _eval_spec(run, config, dataset)
        images = _train_images(opts.epochs, opts.samples_per_epoch or n_train, opts.batch_size)
        every = opts.eval_every_epochs
        evals = (sum(1 for e in range(1, opts.epochs) if every and e % every == 0) + 1)
        val = evals * min(n_val, opts.max_val_samples or n_val)
        val_fwd = flops.classifier_flops(spec, classes or 1000).forward()
        for k in (opts.blocks if task == "partial_finetune" else [None]):
            work = flops.classifier_flops(spec, classes or 1000, blocks=k).train()
            name = task if k is None else f"partial_finetune-k{k}"
            job = _job(name, run_id, images, work, speed, gpus, step="finetune" if k is None else None)
            # the periodic / final scoring on the val split (forward only), at the assumed speed of its FLOPs
            job.images += val
            job.gflop += val * val_fwd / 1e9
            job.gpu_hours += val / speed.of(None, val_fwd)[0] / 3600
            job.wall_hours = job.gpu_hours / max(gpus, 1)
            jobs.append(job)
    return jobs


def dense_jobs(config: dict, task: str, speed, gpus: int) -> list[Job]:
    from cmim.train import flops

    jobs = []
    if task not in config["evaluations"]:
        return jobs
    for run_id in evaluated_runs(config, task):
        run = _resolved(config, run_id)
        recipe = {**DENSE_RECIPES[task], **{k: v for k, v in eval_options(config, task, run_id).items()
                                            if k in DENSE_RECIPES[task]}}
        fwd = flops.vitdet_backbone_forward(run["encoder"], recipe["crop_size"], recipe["window"],
                                            recipe.get("global_blocks", 0))
        job = _job(task, run_id, recipe["iters"] * recipe["batch_size"], 3 * fwd, speed, gpus)
        job.source += f"; backbone only, {recipe['iters']} iters x {recipe['batch_size']} @ {recipe['crop_size']} px"
        jobs.append(job)
    return jobs


def plan_study(config: dict, *, gpu: str = DEFAULT_GPU, mfu: float = DEFAULT_MFU,
               results_dir: Path = Path("benchmarks/results"), samples: dict[str, int] | None = None) -> dict:
    """Every job of a validated study with its images, FLOPs and hours; and the totals."""
    samples = samples or {}
    config = dict(config, _plan_resolved={})
    launch = config.get("launch", {})
    gpus = launch.get("nodes", 1) * launch.get("gpus_per_node", 0)
    compile = config.get("run_defaults", {}).get("compile")
    speed = Speeds(load_measurements(Path(results_dir), gpu), gpu, mfu, compile)
    jobs = [pretrain_job(config, r, speed, gpus, samples) for r in config["runs"]
            if run_method(config, r) not in UNTRAINED_METHODS]
    jobs += monitor_jobs(config, speed, gpus, samples)
    jobs += frozen_jobs(config, speed, gpus, samples)
    for task in ("finetune", "partial_finetune"):
        jobs += finetune_jobs(config, task, speed, gpus, samples)
    for task in ("ade20k", "coco"):
        jobs += dense_jobs(config, task, speed, gpus)
    total = {"images": sum(j.images for j in jobs), "gflop": sum(j.gflop for j in jobs),
             "gpu_hours": sum(j.gpu_hours for j in jobs), "wall_hours": sum(j.wall_hours for j in jobs)}
    return {"gpu": gpu, "gpus": gpus, "mfu_assumed": mfu, "jobs": [asdict(j) for j in jobs], "total": total}


# ----------------------------------------------------------------------------- output


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e6 or abs(x) < 1e-2:
        return f"{x:.3g}"
    return f"{x:,.1f}" if abs(x) < 1e3 else f"{x:,.0f}"


def format_plan(plan: dict) -> str:
    gpus = plan["gpus"]
    on = f"{gpus} x {plan['gpu']}" if gpus else f"1 x {plan['gpu']} (the study sets no GPUs: launch.gpus_per_node 0)"
    lines = [f"compute plan on {on}; wall hours assume linear scaling over the job's GPUs and jobs run one after "
             f"another", "",
             "| job | run | images | GFLOP/img | GFLOP | img/s/GPU | GPU-h | wall h | speed from |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for j in plan["jobs"]:
        img_s = "-" if j["img_per_s_per_gpu"] is None else _num(j["img_per_s_per_gpu"])
        lines.append(f"| {j['job']} | {j['run']} | {j['images']:,} | {_num(j['gflop_per_image'])} | {_num(j['gflop'])} "
                     f"| {img_s} | {_num(j['gpu_hours'])} | {_num(j['wall_hours'])} | {j['source']} |")
    t = plan["total"]
    lines.append(f"| **total** | | {t['images']:,} | | {_num(t['gflop'])} | | {_num(t['gpu_hours'])} | "
                 f"{_num(t['wall_hours'])} | |")
    return "\n".join(lines)


def parse_samples(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if ":" not in key or not value.isdigit():
            raise ValueError(f"--samples {item!r}: expected DATASET:SPLIT=N, e.g. imagenet:train=1281167")
        out[key] = int(value)
    return out


def add_plan_parser(sub) -> None:
    s = sub.add_parser("plan", help="images, FLOPs and GPU-hours of every job of a study, before submitting it")
    s.add_argument("--configfile", nargs="+", default=["config.yaml"], help="config files, merged left to right")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE", help="overrides")
    s.add_argument("--gpu", default=DEFAULT_GPU, help=f"GPU kind the hours are for (default {DEFAULT_GPU})")
    s.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                   help="MFU assumed where nothing was measured (default %(default)s)")
    s.add_argument("--results", default="benchmarks/results", help="folder of `cmim bench` JSON files")
    s.add_argument("--samples", nargs="*", default=[], metavar="DATASET:SPLIT=N",
                   help="split sizes the planner cannot know yet (no manifest, not a known dataset)")
    s.add_argument("--json", default=None, help="also write the plan as JSON here")
    s.set_defaults(fn=cmd_plan)


def cmd_plan(args) -> int:
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {args.mfu}")
    config = load_config(args.configfile, args.set)
    plan = plan_study(config, gpu=args.gpu, mfu=args.mfu, results_dir=Path(args.results),
                      samples=parse_samples(args.samples))
    print(format_plan(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
    return 0 if math.isfinite(plan["total"]["gpu_hours"]) else 1
