"""The Trainer of one pretraining run, built directly (tests only; the pipeline goes through cmim.launch)."""

from __future__ import annotations

from pathlib import Path

from cmim.paths import RunFiles
from cmim.tasks.pretrain import PretrainTask
from cmim.train import distributed
from cmim.train.engine import Trainer


def pretrainer(run: dict, manifest: Path, files: RunFiles, env: distributed.DistEnv, *, num_workers: int = 0,
               log=print) -> Trainer:
    """The Trainer of one pretraining run (what the pretrain rule's job runs)."""
    return Trainer(PretrainTask(run, manifest), files, env, num_workers=num_workers, log=log)
