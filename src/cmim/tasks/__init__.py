"""Training tasks by name: what `<job folder>/job.yaml` says a job is (cmim.launch.TrainJob), and the
job files of the transfer evaluations.

An explicit table, no registry: a typo fails with the list of valid kinds.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cmim.errors import ConfigError
from cmim.train.checkpoint import file_sha256, read_encoder_checkpoint
from cmim.train.task import TrainTask

KINDS = ("pretrain", "finetune", "segmentation", "detection")
EVALUATION_KIND = {"finetune": "finetune", "partial_finetune": "finetune", "ade20k": "segmentation",
                   "coco": "detection"}


def build_task(job: dict) -> TrainTask:
    """The task of a job file's contents (paths are relative to the working directory)."""
    kind = job.get("task")
    if kind == "pretrain":
        from cmim.tasks.pretrain import PretrainTask

        return PretrainTask(yaml.safe_load(Path(job["run_config"]).read_text()), job["manifest"],
                            monitor=job.get("monitor"), decode=job.get("decode", "auto"))
    if kind == "finetune":
        from cmim.tasks.finetune import FinetuneTask

        return FinetuneTask.from_job(job)
    if kind == "segmentation":
        from cmim.tasks.segmentation import SegmentationTask

        return SegmentationTask.from_job(job)
    if kind == "detection":
        from cmim.tasks.detection import DetectionTask

        return DetectionTask.from_job(job)
    raise ValueError(f"unknown training task {kind!r} in the job file; valid: {list(KINDS)}")


def transfer_job(evaluation: str, run: dict, *, run_config: str, checkpoint: str, train_manifest: str,
                 val_manifest: str, options: dict, data: dict, result: str, blocks: int | None = None,
                 examples: str | None = None, gt_json: str | None = None) -> dict:
    """The job file of one transfer evaluation (finetune, partial_finetune, ade20k, coco) of a run.

    Fails here, before any job starts: on a checkpoint that is no encoder export, a partial
    finetuning deeper than the encoder, COCO annotations that are missing.
    """
    read_encoder_checkpoint(Path(checkpoint))
    job = {"task": EVALUATION_KIND[evaluation], "run_config": run_config, "checkpoint": checkpoint,
           "checkpoint_sha256": file_sha256(Path(checkpoint)), "train_manifest": train_manifest,
           "val_manifest": val_manifest, "options": options, "data": data, "result": result}
    if evaluation in ("finetune", "partial_finetune"):
        job["blocks"] = blocks
        depth = run["encoder"]["depth"]
        if blocks is not None and not 0 <= blocks <= depth:
            raise ConfigError(f"partial_finetune.blocks: k = {blocks} but run {run['run']}'s encoder has "
                              f"{depth} blocks; choose 0 <= k <= {depth}")
    else:
        job["examples"] = examples
    if evaluation == "coco":
        if not gt_json or not Path(gt_json).exists():
            raise FileNotFoundError(f"the COCO val annotations {gt_json} are missing: AP is scored against the "
                                    f"real instances json; check datasets.<name>.root")
        job["gt_json"] = gt_json
    return job
