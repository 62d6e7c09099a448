"""Training tasks by name: what `<job folder>/job.yaml` says a job is (cmim.launch.TrainJob).

An explicit table, no registry: a typo fails with the list of valid kinds.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cmim.train.task import TrainTask

KINDS = ("pretrain", "finetune", "segmentation", "detection")


def build_task(job: dict) -> TrainTask:
    """The task of a job file's contents (paths are relative to the working directory)."""
    kind = job.get("task")
    if kind == "pretrain":
        from cmim.tasks.pretrain import PretrainTask

        return PretrainTask(yaml.safe_load(Path(job["run_config"]).read_text()), job["manifest"])
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
