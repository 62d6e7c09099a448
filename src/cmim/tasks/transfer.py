"""The one shape of every transfer task: finetune, partial finetune, ADE20K segmentation, COCO detection.

Each starts from a run's exported encoder and trains a model on a labelled dataset through the one
engine. What they share lives here once: reading the job file, loading and shape-checking the
pretrained encoder, the train/val class list, the job's identity (what decides its weights), its
progress name and summary keys, the exported model file and the common part of the result record.
A task file adds only its recipe: model, data stream, score and extra result keys.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from cmim import io
from cmim.data.manifest import read_manifest
from cmim.evals import results
from cmim.options import SELECTION_KEYS, as_dict, from_dict
from cmim.study import config_hash
from cmim.train import checkpoint as ckpt
from cmim.train.task import Context, TrainTask


def pretrained_encoder(run: dict, checkpoint_path: Path, task: str):
    """(encoder, checkpoint meta) of the run's exported encoder; a checkpoint whose encoder shape is
    not the run's, or a file that is no encoder export, fails naming the file (CheckpointError)."""
    encoder, meta = ckpt.load_encoder(Path(checkpoint_path), expected_spec=run["encoder"])
    if encoder is None:
        raise ValueError(f"run {run['run']}: the raw_pixels baseline has no encoder for {task}; "
                         f"leave it out of evaluations.{task}.runs")
    return encoder, meta


def shared_classes(train_manifest: Path, val_manifest: Path, task: str) -> tuple[dict, dict, list[dict]]:
    """(train manifest, val manifest, classes sorted by id): both splits must list the same classes."""
    train, val = read_manifest(train_manifest), read_manifest(val_manifest)
    classes = sorted(train.get("classes", []), key=lambda c: c["id"])
    if not classes:
        raise ValueError(f"{train_manifest}: {task} needs a class list in the manifest, found none; "
                         f"re-shard the dataset with its format's reader")
    ids = [(c["id"], c["name"]) for c in classes]
    val_ids = [(c["id"], c["name"]) for c in sorted(val.get("classes", []), key=lambda c: c["id"])]
    if val_ids != ids:
        diff = sorted(set(ids) ^ set(val_ids))[:5]
        raise ValueError(f"{val_manifest}: its classes differ from the train split's ({len(val_ids)} vs "
                         f"{len(ids)}; differing (id, name): {diff}); train and val must share one class list")
    return train, val, classes


def finite_or_none(x):
    """NaN (a score with nothing to count) -> None, so result files stay strict JSON."""
    return None if isinstance(x, float) and math.isnan(x) else x


def broadcast_from_main(obj, env):
    """Rank 0's object on every rank (torch.distributed.broadcast_object_list); as given on one rank."""
    if env.world_size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class TransferTask(TrainTask):
    """A training job that starts from a pretrained encoder. A subclass sets `name` (its kind of job),
    `result_task` (the result's name), `options_class` (its options block) and `eval_only` (options
    that change only the scoring, never the weights), then builds `self.model` from `self.encoder`."""

    result_task: str
    options_class: type
    model_format: str
    eval_only: tuple[str, ...] = ()

    def __init__(self, run: dict, checkpoint_path: Path, train_manifest: Path, val_manifest: Path, opts,
                 data: dict, *, result_path: Path | None = None, checkpoint_sha256: str | None = None) -> None:
        self.run, self.opts, self.data = run, opts, data
        self.train_manifest_path, self.val_manifest_path = Path(train_manifest), Path(val_manifest)
        self.result_path = Path(result_path) if result_path else None
        self.train_manifest, val, self.class_records = shared_classes(train_manifest, val_manifest,
                                                                      self.result_task)
        self.val_samples = min(val["num_samples"], opts.max_val_samples or val["num_samples"])
        self.checkpoint_path = Path(checkpoint_path)
        self.encoder, self.ckpt_meta = pretrained_encoder(run, self.checkpoint_path, self.result_task)
        self.checkpoint_sha256 = checkpoint_sha256 or ckpt.file_sha256(self.checkpoint_path)
        self.options = opts.loop()

    @classmethod
    def job_options(cls, job: dict):
        """The options block a job file holds, checked like the config's evaluations.<task> block."""
        return from_dict(cls.options_class, job["options"], f"evaluations.{job.get('evaluation', cls.result_task)}",
                         ignore=SELECTION_KEYS)

    @classmethod
    def from_job(cls, job: dict) -> TransferTask:
        """The task a job file (cmim.launch.write_job) describes; paths relative to the working directory."""
        run = yaml.safe_load(Path(job["run_config"]).read_text())
        return cls(run, Path(job["checkpoint"]), Path(job["train_manifest"]), Path(job["val_manifest"]),
                   cls.job_options(job), job["data"], result_path=job.get("result"),
                   checkpoint_sha256=job.get("checkpoint_sha256"), **cls.job_extras(job))

    @classmethod
    def job_extras(cls, job: dict) -> dict:
        """Task-specific keyword arguments read from a job file (the examples PNG, COCO's GT json)."""
        return {}

    # ------------------------------------------------------------------ what the job is
    def identity(self) -> dict:
        """What decides the weights: a changed eval-only key resumes the finished state and re-scores."""
        return {"task": self.result_task, "run": config_hash(self.run), "checkpoint": self.checkpoint_sha256,
                "options": as_dict(self.opts, without=self.eval_only), "data": self.identity_data(),
                "train": [s["sha256"] for s in self.train_manifest["shards"]]}

    def identity_data(self) -> dict:
        """The part of the data description the weights depend on."""
        return {k: self.data[k] for k in ("mean", "std")}

    def describe(self) -> str:
        return f"{self.run['run']}/{self.result_task}"

    def summary_fields(self) -> dict:
        return {"run": self.run["run"], "method": self.run["method"], "evaluation": self.result_task}

    def manifests(self) -> list:
        return [self.train_manifest_path, self.val_manifest_path]

    def num_train_samples(self) -> int:
        return self.train_manifest["num_samples"]

    def evaluate(self, ctx: Context) -> dict:
        return self.score(ctx)

    def score(self, ctx: Context) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ outputs
    def export_model(self, ctx: Context, step: int, module: torch.nn.Module, **extra) -> None:
        """The trained model (encoder + heads) with what it takes to rebuild it: checkpoint.pt."""
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        io.torch_save({"format": self.model_format, "model": state, "classes": self.classes,
                       "encoder_spec": self.run["encoder"], "task": self.result_task, "run": self.run["run"],
                       "step": step, **extra}, ctx.files.checkpoint)

    def write_record(self, summary: dict, metrics: dict, protocol: dict, dataset: dict | None = None,
                     **extra) -> None:
        """The result file (results/eval/<run>/<task>.json) in the common shape (cmim.evals.results)."""
        if self.result_path is None:
            return
        record = results.record(
            self.result_task, self.run, metrics, protocol=protocol,
            checkpoint=results.checkpoint_info(self.checkpoint_path, self.ckpt_meta, self.checkpoint_sha256),
            dataset={"name": self.data["dataset"], "train_samples": self.train_manifest["num_samples"],
                     "val_samples": self.val_samples, "num_classes": len(self.classes), **(dataset or {})},
            wall_time_s=summary["wall_time_s"], training=summary,
            trainable_parameters=sum(p.numel() for p in self.model.parameters() if p.requires_grad), **extra)
        results.write(self.result_path, record)
