"""Callables that tests/test_slurm_cluster.py submits to SLURM with submitit.

submitit pickles them by reference (module ``slurm_jobs``), so the job's python must be able to import
this module: the tests put tests/ on the job's PYTHONPATH (executor ``slurm_setup``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import submitit


def all_reduce_ranks() -> dict:
    """One task of a torch.distributed job: all_reduce(rank + 1) over gloo; returns what the rank saw."""
    import socket

    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    dist.init_process_group(backend="gloo")
    try:
        t = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(t)
        return {"rank": env.rank, "world_size": env.world_size, "master_addr": env.master_addr,
                "sum": t.item(), "host": socket.gethostname()}
    finally:
        dist.destroy_process_group()


class CountWithCheckpoint(submitit.helpers.Checkpointable):
    """Counts to ``n`` (one step per ``delay`` s), saving progress in a JSON file after every step.

    A (re)started run resumes from the file, not from pickled state; each start is recorded as
    [SLURM_RESTART_COUNT, step it resumed at]. On preemption/timeout, submitit calls checkpoint()
    (Checkpointable: resubmit this callable with the same arguments) and requeues the job.
    """

    def __call__(self, path: str, n: int, delay: float) -> dict:
        file = Path(path)
        state = json.loads(file.read_text()) if file.exists() else {"step": 0, "starts": []}
        state["starts"].append([int(os.environ.get("SLURM_RESTART_COUNT", "0")), state["step"]])
        self._save(file, state)
        while state["step"] < n:
            time.sleep(delay)
            state["step"] += 1
            self._save(file, state)
        return state

    @staticmethod
    def _save(file: Path, state: dict) -> None:
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, file)
