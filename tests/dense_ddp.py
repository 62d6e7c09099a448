"""One rank of a 2-process gloo scoring run of both dense tasks (tests/tasks/test_dense_ddp.py starts two).

usage: python dense_ddp.py <jobs.json> <out dir>; RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the env.
Writes <out dir>/rank<R>.json: each task's score() as this rank returned it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cmim.paths import RunFiles
from cmim.tasks import build_task
from cmim.train import distributed
from cmim.train.engine import Trainer


def main(jobs_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    env = distributed.setup(use_cuda=False)
    out = {}
    for name, job in json.loads(Path(jobs_file).read_text()).items():
        task = build_task(job)
        ctx = Trainer(task, RunFiles(Path(out_dir) / f"{name}-{env.rank}"), env, log=lambda m: None).ctx
        out[name] = task.score(ctx)
    Path(out_dir, f"rank{env.rank}.json").write_text(json.dumps(out, sort_keys=True))
    dist.destroy_process_group()


if __name__ == "__main__":
    assert "RANK" in os.environ
    main(*sys.argv[1:])
