"""The local SLURM cluster (scripts/slurm-local) does what cmim's SLURM paths need: batch jobs with
accounting (sacct), fake GPUs through gres, submitit multi-task jobs with torch.distributed, and
submitit's checkpoint/requeue on preemption."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import submitit

from slurm_cluster import multi_node_partition, sacct
from slurm_jobs import CountWithCheckpoint, all_reduce_ranks

ACCOUNTING = ("State", "Account", "ExitCode", "AllocTRES")

pytestmark = pytest.mark.slurm

TESTS_DIR = Path(__file__).resolve().parent


def _sbatch(cluster: dict, out: Path, wrap: str, *options: str) -> str:
    r = subprocess.run(["sbatch", "--parsable", "-p", cluster["partition"], "-A", cluster["account"],
                        "-o", str(out), *options, "--wrap", wrap], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def _executor(cluster: dict, folder: Path, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(
        timeout_min=60,   # >= 50: an early USR2 counts as preemption in submitit's timeout heuristic
        slurm_partition=cluster["partition"],
        slurm_account=cluster["account"],
        # submitit pickles the callables by reference: the job's python must find tests/slurm_jobs.py
        slurm_setup=[f"export PYTHONPATH={TESTS_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"],
        **params,
    )
    return ex


def _wait(job: submitit.Job, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            raise AssertionError(f"submitit job {job.job_id} not done after {timeout}s; "
                                 f"state {job.state}\n{job.stderr() or ''}"[-4000:])
        time.sleep(0.2)


def test_sbatch_job_completes_and_is_accounted(slurm_cluster, tmp_path):
    out = tmp_path / "hello.out"
    job_id = _sbatch(slurm_cluster, out, "echo hello from $SLURM_JOB_ID")
    record = sacct(job_id, fields=ACCOUNTING)[-1]
    assert record["State"] == "COMPLETED", record
    assert record["ExitCode"] == "0:0"
    assert record["Account"] == slurm_cluster["account"]
    assert out.read_text().strip() == f"hello from {job_id}"


def test_gres_gpu_job_sees_cuda_visible_devices(slurm_cluster, tmp_path):
    out = tmp_path / "gpu.out"
    job_id = _sbatch(slurm_cluster, out, "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES", "--gres=gpu:1")
    record = sacct(job_id, until={"COMPLETED", "FAILED", "CANCELLED"}, fields=ACCOUNTING)[-1]
    assert record["State"] == "COMPLETED", record
    assert "gres/gpu=1" in record["AllocTRES"]
    assert out.read_text().strip() == "CUDA_VISIBLE_DEVICES=0"
    # the node has exactly slurm_cluster["gpus"] of them
    too_many = subprocess.run(["sbatch", f"--gres=gpu:{slurm_cluster['gpus'] + 1}", "--wrap", "true"],
                              capture_output=True, text=True)
    assert too_many.returncode != 0 and "node configuration is not available" in too_many.stderr


def test_submitit_two_tasks_torch_distributed(slurm_cluster, tmp_path):
    ex = _executor(slurm_cluster, tmp_path / "submitit", nodes=1, tasks_per_node=2, cpus_per_task=1)
    job = ex.submit(all_reduce_ranks)
    _wait(job, timeout=120)
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 for r in results), results
    # MASTER_ADDR is the node name, which must resolve (start-slurm.sh fixes /etc/hosts if needed)
    assert results[0]["master_addr"] == socket.gethostname().split(".")[0]


def test_two_node_job_runs_one_task_per_node_and_reduces_over_the_network(slurm_cluster, tmp_path):
    """The network nodes: two hosts (own hostname and address each), gloo between them."""
    partition = multi_node_partition(slurm_cluster)
    r = subprocess.run(["srun", "-p", partition, "-N2", "-n2", "bash", "-c", "echo $SLURM_NODEID $(hostname)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split("\n")[:2]) == ["0 cmim-n1", "1 cmim-n2"], r.stdout
    ex = _executor({**slurm_cluster, "partition": partition}, tmp_path / "submitit", nodes=2, tasks_per_node=1,
                   cpus_per_task=1)
    job = ex.submit(all_reduce_ranks)
    _wait(job, timeout=180)
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [(r["rank"], r["world_size"], r["sum"]) for r in results] == [(0, 2, 3.0), (1, 2, 3.0)], results
    assert results[0]["master_addr"] == "cmim-n1"
    # each rank on its own node (read from the ranks themselves: slurmdbd's NodeList of a just-ended
    # job has read "cmim-n1" for a moment on a loaded machine)
    assert [r["host"].split(".")[0] for r in results] == ["cmim-n1", "cmim-n2"], results


def test_submitit_checkpointable_requeued_after_interrupt(slurm_cluster, tmp_path):
    ckpt = tmp_path / "count.json"
    ex = _executor(slurm_cluster, tmp_path / "submitit")
    job = ex.submit(CountWithCheckpoint(), str(ckpt), 6, 0.5)

    deadline = time.monotonic() + 60   # wait until the first run has made some progress
    while not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 2):
        assert time.monotonic() < deadline, f"no progress after 60s: {ckpt.exists() and ckpt.read_text()}"
        assert not job.done(), job.stderr()
        time.sleep(0.1)
    job._interrupt()   # SIGTERM + USR2 as on preemption: submitit checkpoints and requeues the job

    _wait(job, timeout=120)
    state = job.result()
    assert state["step"] == 6
    first, *restarts = state["starts"]
    assert first == [0, 0]
    assert len(restarts) == 1, state
    restart_count, resumed_at = restarts[0]
    assert restart_count == 1            # SLURM_RESTART_COUNT of the requeued run
    assert resumed_at >= 2               # resumed from the checkpoint file, not from scratch
