"""Where training runs: one launcher for every trained job and every topology, all through submitit
(DESIGN section 4).

- inprocess: the job callable in this process (tests, debugging, the demo);
- local: submitit's local executor, N processes with DDP on this machine;
- slurm: a SLURM job (nodes x tasks), requeued on preemption/timeout, waited for here (so the
  Snakemake rule that calls it is a localrule running on the login node).

A job (pretraining, finetuning, segmentation, detection) is described by one small file,
`<job folder>/job.yaml` ({"task": kind, ...paths and options}); the submitted callable holds only
its path and all state lives on disk, so a requeued or re-run job resumes from the newest state
without flags. The launch block itself never enters a job's identity: moving a job to another
launcher, partition or time limit does not retrain it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import submitit
import yaml

from cmim import io
from cmim.errors import JobFailed
from cmim.paths import RunFiles


def default_num_workers(launch: dict, available: int | None = None) -> int:
    """`launch.num_workers: auto`: every core the job's process has but one (the training process),
    at most 8; an integer is taken as given."""
    if launch.get("num_workers", "auto") != "auto":
        return int(launch["num_workers"])
    cores = available if available is not None else len(os.sched_getaffinity(0))
    per_task = min(cores, launch.get("cpus_per_task") or cores)
    return max(0, min(8, per_task - 1))


VERIFY_ENV = "CMIM_VERIFY_SHARDS"


def verify_policy() -> dict[str, bool]:
    """dataset -> check its shards' sha256 before a job reads them (datasets.<d>.verify_shards), as the
    Snakefile exports it; a dataset it does not name is verified."""
    import json

    raw = os.environ.get(VERIFY_ENV)
    return json.loads(raw) if raw else {}


def verify_manifests(manifests, log=print) -> None:
    """Hash every shard of each manifest (once per job, before training) unless its dataset opts out."""
    from cmim.data.manifest import read_manifest, verify_shards

    policy = verify_policy()
    for path in dict.fromkeys(str(m) for m in manifests):
        dataset = read_manifest(path).get("dataset")
        if policy.get(dataset, True):
            verify_shards(path, log=log)


def cpu_threads(cpus_per_task: int | None, local_world_size: int = 1) -> int:
    """Intra-op threads of a CPU job: the cores it was given (shared by its local ranks), never more
    than the process may use (PyTorch would otherwise start one per core of the machine)."""
    available = len(os.sched_getaffinity(0))
    cores = min(available, cpus_per_task or available)
    return max(1, cores // max(1, local_world_size) if cpus_per_task is None else cores)


class TrainJob:
    """A checkpointable training job: submitit calls `checkpoint()` on preemption and requeues it."""

    def __init__(self, job_file: str) -> None:
        self.job_file = str(job_file)

    def __call__(self) -> dict:
        import torch

        from cmim.tasks import build_task
        from cmim.train import distributed
        from cmim.train.engine import Trainer

        job = yaml.safe_load(Path(self.job_file).read_text())
        env = distributed.setup(use_cuda=None)
        log = lambda m: print(m, flush=True)
        threads = torch.get_num_threads()  # restored below: an in-process job runs in the caller's process
        try:
            if env.device.type == "cpu":
                torch.set_num_threads(cpu_threads(job.get("cpus_per_task"), env.local_world_size))
            task = build_task(job)
            if env.is_main:
                verify_manifests(task.manifests(), log=log)
            distributed.barrier(env)
            return Trainer(task, RunFiles(Path(job["out_dir"])), env, num_workers=job.get("num_workers", 0),
                           log=log, wandb=job.get("wandb")).fit()
        finally:
            torch.set_num_threads(threads)
            distributed.teardown()

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The training loop saved a consistent state before handing the signal over; the requeued
        # job is a fresh instance that finds it on disk.
        return submitit.helpers.DelayedSubmission(TrainJob(self.job_file))


def write_job(out_dir: Path, job: dict) -> Path:
    """The job file every rank reads; rewritten at each launch (it holds paths, not state)."""
    files = RunFiles(Path(out_dir))
    io.write_text(files.job, yaml.safe_dump({**job, "out_dir": str(out_dir)}, sort_keys=True))
    return files.job


def tasks_per_node(launch: dict) -> int:
    if launch["tasks_per_node"] is not None:
        return launch["tasks_per_node"]
    return max(1, launch["gpus_per_node"])


def make_executor(launch: dict, folder: Path, name: str) -> submitit.Executor:
    kind = launch["launcher"]
    cluster = {"local": "local", "slurm": "slurm"}[kind]
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster,
                                     slurm_max_num_timeout=launch["max_requeues"])
    params = dict(name=name, timeout_min=launch["timeout_min"], tasks_per_node=tasks_per_node(launch),
                  gpus_per_node=launch["gpus_per_node"], cpus_per_task=launch["cpus_per_task"],
                  stderr_to_stdout=True)
    if kind == "local":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible and launch["gpus_per_node"]:  # inside an allocation: keep the GPUs we were given
            params["local_visible_gpus"] = tuple(int(g) for g in visible.split(",") if g.strip().isdigit())
    if kind == "slurm":
        params.update(nodes=launch["nodes"], slurm_setup=list(launch["slurm_setup"]),
                      slurm_signal_delay_s=launch["signal_delay_s"],
                      slurm_additional_parameters=dict(launch["slurm_extra"]))
        if launch["mem_gb"] is not None:
            params["mem_gb"] = launch["mem_gb"]
        for key in ("partition", "account", "qos", "constraint"):
            if launch[key]:
                params[f"slurm_{key}"] = launch[key]
    executor.update_parameters(**params)
    return executor


def _follow(job: submitit.Job, log, poll_s: float = 2.0) -> None:
    """Relay rank 0's log to our stdout while the job runs (the Snakemake rule's log shows progress)."""
    offset = 0
    while not job.done():
        offset = _relay(job, offset, log)
        time.sleep(poll_s)
    _relay(job, offset, log)


def _relay(job: submitit.Job, offset: int, log) -> int:
    path = job.paths.stdout
    if not Path(path).exists():
        return offset
    if Path(path).stat().st_size < offset:  # a requeued SLURM job may start a fresh log
        offset = 0
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    if chunk:
        log(chunk.decode(errors="replace").rstrip("\n"))
    return offset + len(chunk)


def submit_job(job_file: Path, launch: dict, name: str, log=print) -> submitit.Job:
    """Submit a training job to the local or SLURM executor (not for inprocess)."""
    folder = RunFiles(Path(job_file).parent).submitit
    executor = make_executor(launch, folder.resolve(), name=f"cmim-{name}")
    with submitit.helpers.clean_env():  # never inherit an outer job's SLURM/torch.distributed variables
        job = executor.submit(TrainJob(str(job_file)))
    log(f"[launch] {launch['launcher']} job {job.job_id} for {name}; logs in {folder}")
    return job


def failure_reason(error: Exception) -> str:
    """The line of a failed job's error that says why: the job's own exception (`SomeError: ...`)
    from the traceback submitit relays, else the first line of the message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)(:|$)", line)]
    return raised[-1] if raised else (lines[0] if lines else type(error).__name__)


def wait_for(job: submitit.Job, name: str, log=print) -> dict:
    """Relay the job's progress until it ends (requeues included); its rank-0 result, or an error with its log."""
    try:
        _follow(job, log)
        results = job.results()
    except Exception as e:
        raise JobFailed(f"training job {job.job_id} of {name} failed: {failure_reason(e)}; "
                        f"its log: {job.paths.stdout}") from e
    return results[0]


def _launch_fields(launch: dict) -> dict:
    """What a job file takes from the launch block: how the job runs, never what it computes."""
    return {"num_workers": default_num_workers(launch), "cpus_per_task": launch["cpus_per_task"],
            "wandb": launch.get("wandb"), "decode": launch.get("decode", "auto")}


def launch_job(job: dict, out_dir: Path, launch: dict, name: str, log=print) -> dict:
    """Write the job file, run the job on the configured launcher and wait for it."""
    job = {**job, **_launch_fields(launch)}
    job_file = write_job(Path(out_dir), job)
    if launch["launcher"] == "inprocess":
        # The same callable, called here. Not through submitit's debug executor: that one opens
        # pdb on any exception, which would hang a pipeline job waiting on stdin.
        return TrainJob(str(job_file))()
    return wait_for(submit_job(job_file, launch, name, log), name, log)


# ----------------------------------------------------------------------------- pretraining


def pretrain_job(run_config: Path, manifest: Path, monitor: dict | None = None) -> dict:
    """monitor: the online kNN monitor's block with its val_manifest and kNN protocol (None = off)."""
    return {"task": "pretrain", "run_config": str(run_config), "manifest": str(manifest), "monitor": monitor}


def submit_pretrain(run_config: Path, manifest: Path, out_dir: Path, launch: dict, run_id: str,
                    log=print, monitor: dict | None = None) -> submitit.Job:
    job = {**pretrain_job(run_config, manifest, monitor), **_launch_fields(launch)}
    return submit_job(write_job(Path(out_dir), job), launch, run_id, log)


def launch_pretrain(run_config: Path, manifest: Path, out_dir: Path, launch: dict, run_id: str, log=print,
                    monitor: dict | None = None) -> dict:
    """Pretrain one run on the configured launcher; the untrained baselines are written here, in seconds."""
    run = yaml.safe_load(Path(run_config).read_text())
    from cmim.study import BASELINE_METHODS, IMPORTED

    if run["method"] == IMPORTED:
        raise ValueError(f"run {run['run']} is imported: its encoder comes from its weights file through "
                         f"`python -m cmim import-checkpoint` (rule import_checkpoint), never from pretraining")
    if run["method"] in BASELINE_METHODS:
        from cmim.tasks.pretrain import write_baseline

        return write_baseline(run, RunFiles(Path(out_dir)), log=log)
    return launch_job(pretrain_job(run_config, manifest, monitor), out_dir, launch, run_id, log)
