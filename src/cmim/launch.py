"""Where training runs: one launcher for every topology, all through submitit (DESIGN section 4).

- inprocess: the job callable in this process (tests, debugging, the demo);
- local: submitit's local executor, N processes with DDP on this machine;
- slurm: a SLURM job (nodes x tasks), requeued on preemption/timeout, waited for here (so the
  Snakemake rule that calls it is a localrule running on the login node).

The submitted callable holds only paths; all state lives on disk, so a requeued or re-run job
resumes from the newest checkpoint without flags.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import submitit
import yaml

from cmim.paths import RunFiles


class PretrainJob:
    """A checkpointable training job: submitit calls `checkpoint()` on preemption and requeues it."""

    def __init__(self, run_config: str, manifest: str, out_dir: str) -> None:
        self.run_config, self.manifest, self.out_dir = str(run_config), str(manifest), str(out_dir)

    def __call__(self) -> dict:
        from cmim.train import distributed
        from cmim.train.engine import Pretrainer

        run = yaml.safe_load(Path(self.run_config).read_text())
        env = distributed.setup(use_cuda=None)
        try:
            return Pretrainer(run, Path(self.manifest), RunFiles(Path(self.out_dir)), env,
                              log=lambda m: print(m, flush=True)).fit()
        finally:
            distributed.teardown()

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The training loop saved a consistent state before handing the signal over; the requeued
        # job is a fresh instance that finds it on disk.
        return submitit.helpers.DelayedSubmission(PretrainJob(self.run_config, self.manifest, self.out_dir))


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


def submit_pretrain(run_config: Path, manifest: Path, out_dir: Path, launch: dict, run_id: str,
                    log=print) -> submitit.Job:
    """Submit the training job to the local or SLURM executor (not for inprocess)."""
    folder = RunFiles(Path(out_dir)).submitit
    executor = make_executor(launch, folder.resolve(), name=f"cmim-{run_id}")
    with submitit.helpers.clean_env():  # never inherit an outer job's SLURM/torch.distributed variables
        job = executor.submit(PretrainJob(str(run_config), str(manifest), str(out_dir)))
    log(f"[launch] {launch['launcher']} job {job.job_id} for run {run_id}; logs in {folder}")
    return job


def wait_for(job: submitit.Job, run_id: str, log=print) -> dict:
    """Relay the job's progress until it ends (requeues included); its rank-0 result, or an error with its log."""
    try:
        _follow(job, log)
        results = job.results()
    except Exception as e:
        raise RuntimeError(f"training job {job.job_id} of run {run_id} failed: {e}\nlogs: {job.paths.stdout}") from e
    return results[0]


def launch_pretrain(run_config: Path, manifest: Path, out_dir: Path, launch: dict, run_id: str, log=print) -> dict:
    """Run the training job on the configured launcher and wait for it; raise with the job's log on failure."""
    untrained = yaml.safe_load(Path(run_config).read_text()).get("epochs") == 0  # random_init, raw_pixels
    if launch["launcher"] == "inprocess" or untrained:
        # The same callable, called here. Not through submitit's debug executor: that one opens
        # pdb on any exception, which would hang a pipeline job waiting on stdin.
        return PretrainJob(str(run_config), str(manifest), str(out_dir))()
    return wait_for(submit_pretrain(run_config, manifest, out_dir, launch, run_id, log), run_id, log)

