"""Both dense tasks scored by two gloo processes: every rank returns the one-process score."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmim.paths import RunFiles
from cmim.tasks import build_task
from cmim.train import distributed
from cmim.train.engine import Trainer
from dense_jobs import det_job, one_thread, seg_job

_one_thread = pytest.fixture(autouse=True)(one_thread)
SCRIPT = Path(__file__).resolve().parents[1] / "dense_ddp.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_return_the_one_rank_scores_on_every_rank(dense_encoder, dense_shards, tmp_path):
    jobs = {"segmentation": seg_job(dense_encoder, dense_shards, tmp_path),
            "detection": det_job(dense_encoder, dense_shards, tmp_path, box_score_thresh=0.0)}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs, default=str))
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "jobs.json"), str(tmp_path)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = {}
    for name, job in jobs.items():
        task = build_task(json.loads(json.dumps(job, default=str)))
        env1 = distributed.DistEnv(0, 1, 0, 1, torch.device("cpu"))
        one[name] = json.loads(json.dumps(task.score(Trainer(task, RunFiles(tmp_path / name), env1,
                                                                  log=lambda m: None).ctx)))
    assert ranks[0] == ranks[1] == one
    assert one["detection"]["detections"] > 0 and one["segmentation"]["mIoU"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_two_process_ddp_training_completes_with_every_parameter_reduced(task, dense_encoder, dense_shards, tmp_path):
    """DDP without find_unused_parameters fails at the second step if any parameter got no gradient
    (an empty mask batch, the unused final norm): the run must finish and write its result."""
    from cmim.launch import launch_job
    from dense_jobs import LAUNCH

    make = seg_job if task == "segmentation" else det_job
    launch_job(make(dense_encoder, dense_shards, tmp_path, iters=4), tmp_path / "ddp",
               dict(LAUNCH, launcher="local", tasks_per_node=2), f"ddp-{task}", log=lambda m: None)
    result = json.loads((tmp_path / ("ade20k.json" if task == "segmentation" else "coco.json")).read_text())
    assert result["training"]["world_size"] == 2 and result["training"]["steps"] == 4
