"""The training engine: outputs, determinism, resume after kill -9 / a signal, NaN guard, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cmim.launch import launch_pretrain
from cmim.paths import RunFiles
from cmim.tasks.pretrain import PretrainTask
from cmim.train import distributed
from cmim.train.engine import NonFiniteLoss
from cmim.train.precision import autocast_dtype, fused_attention
from pretraining import pretrainer
from tiny import tiny_run

INPROCESS = {"launcher": "inprocess", "nodes": 1, "gpus_per_node": 0, "tasks_per_node": None, "cpus_per_task": 2,
             "mem_gb": None, "timeout_min": 30, "partition": None, "account": None, "qos": None, "constraint": None,
             "max_requeues": 3, "signal_delay_s": 120, "slurm_setup": [], "slurm_extra": {}}


def write_run(tmp_path: Path, run: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def encoder_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["encoder"]


def train(tmp_path: Path, shards, run: dict, launch=INPROCESS) -> RunFiles:
    out = tmp_path / run["run"]
    launch_pretrain(write_run(tmp_path, run), shards["train"], out, launch, run["run"], log=lambda m: None)
    return RunFiles(out)


def test_training_writes_every_output_and_is_deterministic(tmp_path, fmnist_shards):
    run = tiny_run("mae")
    a = train(tmp_path / "a", fmnist_shards, run)
    summary = json.loads(a.summary.read_text())
    assert summary["steps"] == 12 and summary["images_seen"] == 12 * 64
    assert summary["flops_per_image"] > 0 and summary["img_per_s"] > 0 and summary["mfu"] is None  # CPU
    # what a compiled step (no FLOP counter) reports instead: the analytic model, equal to the count
    task = PretrainTask(run, fmnist_shards["train"])
    cpu = torch.device("cpu")
    fused, _ = fused_attention(cpu, autocast_dtype(task.options.precision, cpu))   # the kernel the job ran
    analytic = task.analytic_flops_per_image(run["batch_size"], fused)
    assert analytic == pytest.approx(summary["flops_per_image"], rel=1e-9)
    rows = [json.loads(line) for line in a.metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"total", "recon", "lr", "img_per_s"} <= set(rows[0])
    assert a.resume_epoch_checkpoint(1).exists() and a.resume_epoch_checkpoint(2).exists()
    b = train(tmp_path / "b", fmnist_shards, run)
    wa, wb = encoder_weights(a.checkpoint), encoder_weights(b.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed, same config -> identical weights"


def test_resume_continues_exactly_where_it_stopped(tmp_path, fmnist_shards):
    """A signal during step 4 stops the run after step 5 (mid-epoch: 6 steps/epoch); resume: identical weights."""
    run = tiny_run("mae", checkpoint_every_steps=100)
    full = train(tmp_path / "full", fmnist_shards, run)

    files = RunFiles(tmp_path / "cut" / run["run"])
    env = distributed.setup(use_cuda=False)
    trainer = pretrainer(run, fmnist_shards["train"], files, env, log=lambda m: None)
    original_apply = trainer._apply

    def apply_then_signal(progress):
        original_apply(progress)
        if round(progress * 12) == 4:
            os.kill(os.getpid(), signal.SIGUSR2)

    trainer._apply = apply_then_signal
    with pytest.raises(SystemExit, match="state saved at .*step-000000005.pt"):
        trainer.fit()
    assert not files.checkpoint.exists()  # the rule's outputs appear only at the very end
    pretrainer(run, fmnist_shards["train"], files, env, log=lambda m: None).fit()
    wa, wb = encoder_weights(full.checkpoint), encoder_weights(files.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [json.loads(line)["step"] for line in files.metrics.read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12], "a resumed run logs every step once"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, fmnist_shards):
    run = tiny_run("mae")
    files = RunFiles(tmp_path / "nan")
    env = distributed.setup(use_cuda=False)
    trainer = pretrainer(run, fmnist_shards["train"], files, env, log=lambda m: None)
    forward = trainer.task.model.forward
    calls = {"n": 0}

    def poisoned(batch):
        out = forward(batch)
        calls["n"] += 1
        if calls["n"] == 6:  # the 6th step (step index 5)
            out["total"] = out["total"] * float("nan")
        return out

    trainer.task.model.forward = poisoned
    with pytest.raises(NonFiniteLoss, match=r"non-finite at step 5 .*step-000000004.pt"):
        trainer.fit()
    good = torch.load(files.resume / "step-000000004.pt", map_location="cpu", weights_only=False)
    assert good["step"] == 4
    assert not (files.resume / "step-000000006.pt").exists()


def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, fmnist_shards):
    """The CLI (what the pretrain rule runs) killed with SIGKILL mid-epoch, then run again."""
    run = tiny_run("mae", epochs=3, checkpoint_every_steps=2, checkpoint_epochs=[])
    reference = train(tmp_path / "ref", fmnist_shards, run)
    config = write_run(tmp_path, run)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cmim", "pretrain", "--run-config", str(config), "--manifest",
           str(fmnist_shards["train"]), "--out", str(out), "--launch", json.dumps(INPROCESS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list((out / "resume").glob("step-00000000[4-9].pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    states = sorted((out / "resume").glob("step-*.pt"))
    assert states and not (out / "checkpoint.pt").exists()
    killed_at = int(states[-1].stem.split("-")[1])
    assert 4 <= killed_at < 18, killed_at
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith(states[-1].name)
    wa, wb = encoder_weights(reference.checkpoint), encoder_weights(out / "checkpoint.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_local_ddp_two_processes_match_one_process(tmp_path, fmnist_shards):
    """2 gloo ranks x 32 images = 1 rank x 64: same samples per step, a matching loss trajectory."""
    run = tiny_run("mae", epochs=3, checkpoint_epochs=[])
    one = train(tmp_path / "one", fmnist_shards, run)
    two = train(tmp_path / "two", fmnist_shards, run, launch=dict(INPROCESS, launcher="local", tasks_per_node=2,
                                                                    cpus_per_task=1))
    s1, s2 = (json.loads(f.summary.read_text()) for f in (one, two))
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    assert s1["images_seen"] == s2["images_seen"] == 18 * 64
    l1 = [json.loads(r)["total"] for r in one.metrics.read_text().splitlines()]
    l2 = [json.loads(r)["total"] for r in two.metrics.read_text().splitlines()]
    assert len(l1) == len(l2) == 9
    assert l1[-1] < l1[0] and l2[-1] < l2[0]
    rel = [abs(a - b) / a for a, b in zip(l1, l2)]
    assert max(rel) < 0.1, f"loss trajectories differ by up to {max(rel):.1%}: {l1} vs {l2}"


def test_resume_log_counts_epochs_as_the_progress_lines_do(tmp_path, fmnist_shards):
    """A 2-epoch run resumed from its last state said "(step 12, epoch 3)": the state holds the next
    epoch (0-based). It says where the run stands in the progress lines' terms."""
    run = tiny_run("mae", checkpoint_every_steps=100)     # 6 steps/epoch x 2 epochs; states at the epoch ends
    files = RunFiles(tmp_path / "twice")
    env = distributed.setup(use_cuda=False)
    pretrainer(run, fmnist_shards["train"], files, env, log=lambda m: None).fit()
    lines: list[str] = []
    pretrainer(run, fmnist_shards["train"], files, env, log=lines.append).fit()
    resumed = [line for line in lines if "resuming from" in line]
    assert len(resumed) == 1 and resumed[0].endswith("step-000000012.pt (step 12, end of epoch 2/2)"), resumed
    assert not any("epoch 3" in line for line in lines), lines


def test_resume_position_mid_epoch():
    from cmim.train.engine import resume_position
    from cmim.train.task import Plan

    plan = Plan(samples_per_epoch=384, steps_per_epoch=6, epochs=2, total_steps=12, warmup_steps=3, micro_batch=64,
                peak_lr=1e-3)
    assert resume_position({"step": 8, "epoch": 1, "step_in_epoch": 2}, plan) == \
        "step 8, epoch 2/2, 2 of its 6 steps done"
    assert resume_position({"step": 6, "epoch": 1, "step_in_epoch": 0}, plan) == "step 6, end of epoch 1/2"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_on_a_cpu_runs_the_explicit_attention_and_says_so(tmp_path, fmnist_shards, precision):
    """SDPA's CPU flash kernel is 2.7-9.6x slower under bf16: the engine moves every attention module of
    the model (encoder and decoder) to timm's explicit path then, and the log line names it."""
    lines = []
    trainer = pretrainer(tiny_run("mae", precision=precision), fmnist_shards["train"], RunFiles(tmp_path / "r"),
                         distributed.setup(use_cuda=False), log=lines.append)
    fused = {m.fused_attn for m in trainer.task.model.modules() if hasattr(m, "fused_attn")}
    assert fused == {precision == "fp32"}
    assert ("attention: explicit" in trainer.precision_reason) is (precision == "bf16")
    trainer.prepare()
    assert all(group.get("fused") for group in trainer.optimizer.param_groups)   # one AdamW kernel on CPU too
