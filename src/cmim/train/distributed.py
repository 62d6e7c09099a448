"""One process's place in the job: rank, world size, device; the same on every launcher.

Why through submitit: its TorchDistributedEnvironment reads the SLURM / local-executor variables
and exports MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, so inprocess, local and slurm jobs set
up torch.distributed the same way.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _submitit_tasks() -> int:
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return 1
    import submitit

    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:
        return 1


def setup(use_cuda: bool | None = None) -> DistEnv:
    """Join the process group when the job has several tasks; pick this rank's device."""
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if _submitit_tasks() > 1 and not dist.is_initialized():
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                     overwrite=True)
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(minutes=30))
        rank, world, local_rank, local_world = env.rank, env.world_size, env.local_rank, env.local_world_size
    elif dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    else:
        rank, world, local_rank, local_world = 0, 1, 0, 1
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        if local_world > 1:  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistEnv(rank, world, local_rank, local_world, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_max(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise max over ranks (used for stop flags: NaN seen, preemption requested)."""
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    if env.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_reduce_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    if env.world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return {k: v / env.world_size for k, v in zip(keys, t.tolist())}


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()
