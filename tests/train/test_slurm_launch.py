"""Training on a real local SLURM cluster: submitit launcher (one node, two nodes), preemption, Snakemake's executor."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_engine import INPROCESS, encoder_weights, train, write_run

from cmim.launch import submit_pretrain, wait_for
from cmim.paths import RunFiles
from slurm_cluster import multi_node_partition, sacct, task_hosts
from tiny import ROOT, fmnist_only, tiny_config, tiny_run, write_config

pytestmark = pytest.mark.slurm


def slurm_launch(cluster: dict, **kw) -> dict:
    return {**INPROCESS, "launcher": "slurm", "partition": cluster["partition"], "account": cluster["account"],
            "timeout_min": 60, "cpus_per_task": 1, **kw}


# The uninterrupted reference runs as the SLURM jobs do (cpus_per_task 1: one intra-op thread, no
# loader worker): a different thread count reorders float reductions, and bitwise equality is the claim.
REFERENCE = {**INPROCESS, "cpus_per_task": 1}


def settled_states(job_id: str) -> list[str]:
    """The job's state history (one per requeued run) once it has ended."""
    return [row["State"] for row in sacct(job_id, history=True, timeout=60)]


def test_ddp_pretrain_runs_as_a_slurm_job(tmp_path, fmnist_shards, slurm_cluster):
    run = tiny_run("mae", checkpoint_epochs=[])
    out = tmp_path / "mae"
    job = submit_pretrain(write_run(tmp_path, run), fmnist_shards["train"], out,
                          slurm_launch(slurm_cluster, tasks_per_node=2), "mae", log=lambda m: None)
    wait_for(job, "mae", log=lambda m: None)
    summary = json.loads(RunFiles(out).summary.read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 12
    assert settled_states(job.job_id)[-1] == "COMPLETED"
    sbatch = Path(job.paths.submission_file).read_text()
    assert "#SBATCH --signal=USR2@120" in sbatch and "#SBATCH --ntasks-per-node=2" in sbatch


def test_two_node_pretraining_matches_one_process(tmp_path, fmnist_shards, slurm_cluster):
    """launch: {launcher: slurm, nodes: 2} on the network nodes, 1 gloo rank per node x 32 images =
    1 rank x 64: the same samples per step, a matching loss trajectory (as for local DDP)."""
    from cmim.launch import launch_pretrain

    partition = multi_node_partition(slurm_cluster)
    run = tiny_run("mae", epochs=3, checkpoint_epochs=[])
    one = train(tmp_path / "one", fmnist_shards, run)
    out = tmp_path / "two" / "mae"
    launch = slurm_launch(slurm_cluster, partition=partition, nodes=2, tasks_per_node=1, cpus_per_task=1)
    launch_pretrain(write_run(tmp_path / "two", run), fmnist_shards["train"], out, launch, "mae", log=lambda m: None)
    s1, s2 = (json.loads(f.read_text()) for f in (one.summary, RunFiles(out).summary))
    assert s1["world_size"] == 1 and s2["world_size"] == 2
    assert s1["images_seen"] == s2["images_seen"] == 18 * 64
    l1, l2 = ([json.loads(r)["total"] for r in f.read_text().splitlines()]
              for f in (one.metrics, RunFiles(out).metrics))
    assert len(l1) == len(l2) == 9 and l2[-1] < l2[0]
    rel = [abs(a - b) / a for a, b in zip(l1, l2)]
    assert max(rel) < 0.1, f"loss trajectories differ by up to {max(rel):.1%}: {l1} vs {l2}"
    job_dir = next(p for p in RunFiles(out).submitit.iterdir() if p.name.isdigit())
    assert sacct(job_dir.name)[-1] == {"State": "COMPLETED"}
    # each rank on its own node, read from submitit's own start line of each task (slurmdbd's NodeList
    # of a just-ended job has read "cmim-n1" for a moment on a loaded machine)
    assert task_hosts(job_dir) == ["cmim-n1", "cmim-n2"]


def submit_and_interrupt(tmp_path, fmnist_shards, cluster, run: dict, timeout: bool, **launch):
    """Submit `run`, wait until it is mid-run (step 6 logged), then send SLURM's preemption
    (SIGTERM, USR2) or time-limit (USR2 alone) signal the way submitit's own tests do."""
    out = tmp_path / ("timed_out" if timeout else "preempted")
    job = submit_pretrain(write_run(tmp_path, run), fmnist_shards["train"], out, slurm_launch(cluster, **launch),
                          "mae", log=lambda m: None)
    metrics = RunFiles(out).resume_metrics
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    # submitit caches the state sacct gave it a moment ago, so ask the run itself whether it is still going
    assert metrics.exists() and not RunFiles(out).summary.exists(), "the job must be interrupted mid-run"
    job._interrupt(timeout=timeout)
    return job, out


# submitit calls a USR2 a time-out when the job is past min(80%, limit - 10 min) of its time limit,
# which any job with a limit under 10 minutes is: 60 min -> preemption, 5 min -> time-out.
@pytest.mark.parametrize(("timeout", "limit_min"), [(False, 60), (True, 5)], ids=["preemption", "time-limit"])
def test_interrupted_slurm_job_is_requeued_and_finishes_from_its_checkpoint(tmp_path, fmnist_shards, slurm_cluster,
                                                                            timeout, limit_min):
    run = tiny_run("mae", epochs=12, checkpoint_every_steps=100, checkpoint_epochs=[])  # 72 steps: a few seconds
    reference = train(tmp_path / "ref", fmnist_shards, run, REFERENCE)
    job, out = submit_and_interrupt(tmp_path, fmnist_shards, slurm_cluster, run, timeout, timeout_min=limit_min)
    wait_for(job, "mae", log=lambda m: None)
    summary = json.loads(RunFiles(out).summary.read_text())
    assert summary["resumed_from"], "the requeued job must resume from the saved state"
    log = Path(job.paths.stdout).read_text()
    assert "received SIGUSR2" in log and "resuming from" in log
    history = settled_states(job.job_id)
    assert "REQUEUED" in history and history[-1] == "COMPLETED", history
    wa, wb = encoder_weights(reference.checkpoint), encoder_weights(RunFiles(out).checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "interrupted + resumed must equal uninterrupted"
    case = "timed-out" if timeout else "preempted"
    assert f"this job is {case}" in log, "submitit must classify the signal as SLURM would mean it"


def test_a_time_out_past_max_requeues_fails_clearly_and_keeps_the_saved_state(tmp_path, fmnist_shards, slurm_cluster):
    run = tiny_run("mae", epochs=12, checkpoint_every_steps=100, checkpoint_epochs=[])
    job, out = submit_and_interrupt(tmp_path, fmnist_shards, slurm_cluster, run, True, timeout_min=5, max_requeues=0)
    with pytest.raises(RuntimeError, match="timed-out too many times"):
        wait_for(job, "mae", log=lambda m: None)
    assert list((out / "resume").glob("step-*.pt")), "the state saved on the signal must stay for a rerun"
    assert not RunFiles(out).checkpoint.exists()


def test_scontrol_requeue_mid_run_resumes_from_the_newest_state(tmp_path, fmnist_shards, slurm_cluster):
    """An operator's `scontrol requeue`: SIGTERM, SIGKILL after KillWait, no USR2; the job comes back
    and continues from the newest rolling state, ending with the uninterrupted run's weights."""
    run = tiny_run("mae", epochs=40, checkpoint_every_steps=4, checkpoint_epochs=[])  # 240 steps: 5-15 s
    reference = train(tmp_path / "ref", fmnist_shards, run, REFERENCE)
    out = tmp_path / "requeued"
    job = submit_pretrain(write_run(tmp_path, run), fmnist_shards["train"], out, slurm_launch(slurm_cluster),
                          "mae", log=lambda m: None)
    resume = out / "resume"
    deadline = time.time() + 180
    while time.time() < deadline and not list(resume.glob("step-*.pt")):
        time.sleep(0.1)
    assert not RunFiles(out).summary.exists(), "the job must be requeued mid-run"
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, capture_output=True, text=True)
    wait_for(job, "mae", log=lambda m: None)
    summary = json.loads(RunFiles(out).summary.read_text())
    assert summary["resumed_from"], "the requeued job must resume from a rolling state"
    history = settled_states(job.job_id)
    assert "REQUEUED" in history and history[-1] == "COMPLETED", history
    wa, wb = encoder_weights(reference.checkpoint), encoder_weights(RunFiles(out).checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "requeued + resumed must equal uninterrupted"


def test_snakemake_slurm_profile_runs_the_pretrain_rule(tmp_path, slurm_cluster):
    cfg = tiny_config(launcher="local", cpus_per_task=1)
    fmnist_only(cfg)
    cfg["runs"] = {"mae": cfg["runs"]["mae"]}
    write_config(tmp_path / "config.yaml", cfg)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
           "--profile", str(ROOT / "profiles" / "slurm"), "--jobs", "2",
           "--default-resources", f"slurm_account={slurm_cluster['account']}", "mem_mb=2000", "runtime=30",
           "--set-threads", "shard=1", "linear_probe=1",
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
           "--slurm-keep-successful-logs", "results/pretrain/mae/checkpoint.pt"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert result.returncode == 0, result.stderr[-4000:] + logs
    assert "sbatch" in result.stderr + result.stdout or "SLURM" in result.stderr
    summary = json.loads((tmp_path / "results/pretrain/mae/summary.json").read_text())
    assert summary["steps"] == 12
