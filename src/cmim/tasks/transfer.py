"""What the two dense transfer tasks (segmentation, detection) share: option parsing, the encoder
they start from, the manifests' class lists, and the parts of a job's identity and result.

Kept apart from the task files so each of those reads as its recipe alone.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

from cmim.data.loader import read_manifest
from cmim.train import checkpoint as ckpt
from cmim.train.task import TrainTask

SELECTION_KEYS = ("runs", "per_run", "dataset")   # evaluations.<task> keys that choose, not configure


def options_from_config(cls, spec: dict, task: str):
    """The frozen options dataclass `cls` from a resolved evaluations.<task> block: lists become
    tuples, the selection keys are ignored, an unknown key fails with the valid ones."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(spec) - set(names) - set(SELECTION_KEYS))
    if unknown:
        raise ValueError(f"unknown {task} option(s) {unknown}; valid: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in names})


def options_dict(opts) -> dict:
    return {f.name: getattr(opts, f.name) for f in fields(opts)}


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


class DenseTransferTask(TrainTask):
    """The TrainTask parts both dense tasks share. A subclass sets `result_task` (its result name)
    and `eval_only` (options that change only the scoring, never the weights); it holds run, opts,
    data, checkpoint_sha256, train_manifest and the two manifest paths."""

    result_task: str
    eval_only: tuple[str, ...]

    def identity(self) -> dict:
        """What decides the weights: a changed eval-only key resumes the finished state and re-scores."""
        from cmim.config import config_hash

        opts = {k: v for k, v in options_dict(self.opts).items() if k not in self.eval_only}
        return {"task": self.result_task, "run": config_hash(self.run), "checkpoint": self.checkpoint_sha256,
                "options": opts, "data": {k: self.data[k] for k in ("mean", "std")},
                "train": [s["sha256"] for s in self.train_manifest["shards"]]}

    def describe(self) -> str:
        return f"{self.run['run']}/{self.result_task}"

    def summary_fields(self) -> dict:
        return {"run": self.run["run"], "method": self.run["method"], "evaluation": self.result_task}

    def manifests(self) -> list:
        return [self.train_manifest_path, self.val_manifest_path]

    def num_train_samples(self) -> int:
        return self.train_manifest["num_samples"]
