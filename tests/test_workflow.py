"""The DAG, run for real at tiny size: lint, dry run, a full run, and a second run that does nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cmim import workflow as W
from cmim.config import validate
from tiny import ROOT, fmnist_only, tiny_config, write_config

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (workdir / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}\n{logs}")
    return result


def test_lint_is_clean():
    result = subprocess.run([SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_lists_every_stage(tmp_path):
    write_config(tmp_path / "config.yaml", tiny_config())
    out = snakemake(tmp_path, "-n").stdout
    for rule in ("demo_data", "shard", "run_config", "pretrain", "baseline_encoder", "epoch_checkpoint", "features",
                 "linear_probe", "knn", "knn_epoch", "finetune", "partial_finetune", "probe_table", "knn_table",
                 "finetune_table", "partial_finetune_table", "loss_figure", "epochs_figure", "partial_figure"):
        assert f"rule {rule}:" in out or f"{rule} " in out, rule


def test_pretrain_resources_follow_the_launch_block():
    cfg = validate(tiny_config(launcher="local", gpus_per_node=4, cpus_per_task=6, partition="gpu", mem_gb=64))
    assert W.pretrain_resources(cfg) == {"runtime": 4320, "cpus_per_task": 24, "gpu": 4, "mem_mb": 65536,
                                         "slurm_partition": "gpu"}
    assert W.pretrain_threads(cfg) == 24
    assert W.frozen_eval_threads(cfg) == 6    # one process: its threads and loader workers
    assert not W.pretrain_is_local_rule(cfg)
    assert W.pretrain_is_local_rule(validate(tiny_config(launcher="slurm")))


def test_baselines_are_split_from_trained_runs_even_through_run_defaults():
    cfg = tiny_config(methods=("mae", "can"))
    cfg["run_defaults"]["method"] = "random_init"
    cfg["runs"]["untrained"] = {}  # method from run_defaults
    cfg = validate(cfg)
    assert W.baseline_runs(cfg) == ["random_init", "raw_pixels", "untrained"]
    assert W.trained_runs(cfg) == ["mae", "can"]


def test_tiny_pipeline_runs_end_to_end_and_then_has_nothing_to_do(tmp_path):
    cfg = tiny_config()
    cfg["figures"] = {"feature_maps": {}, "attention_maps": {"images": 2}}
    write_config(tmp_path / "config.yaml", cfg)
    snakemake(tmp_path)
    res = tmp_path / "results"
    manifest = json.loads((res / "shards/fmnist/train/manifest.json").read_text())
    assert manifest["num_samples"] == 600 and len(manifest["shards"]) == 3
    assert (res / "demo/scenes_ade/ADEChallengeData2016/objectInfo150.txt").exists()
    assert (res / "demo/scenes_coco/coco/annotations/instances_val2017.json").exists()
    summary = json.loads((res / "pretrain/mae/summary.json").read_text())
    assert summary["steps"] == 12 and summary["images_seen"] == 768
    assert (res / "pretrain/mae/epochs/ckpt-1.pt").exists()
    exported, state = res / "pretrain/mae/epochs/ckpt-1.pt", res / "pretrain/mae/resume/epochs/ckpt-1.pt"
    assert exported.stat().st_ino == state.stat().st_ino
    rows = [json.loads(line) for line in (res / "pretrain/mae/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval" not in r] == list(range(2, 13, 2))
    # the online kNN monitor (schema defaults: every 10 epochs and the last) at the end of epoch 2
    assert [(r["step"], sorted(r["eval"])) for r in rows if "eval" in r] == [(12, ["knn_top1", "knn_top5",
                                                                                 "monitor_s"])]
    for job in ("pretrain/mae", "eval/mae/finetune", "eval/mae/ade20k"):      # TensorBoard: one run per job folder
        assert list((res / job).glob("events.out.tfevents.*")), job
    table = pd.read_csv(res / "tables/linear_probe.csv")
    assert list(table["run"]) == ["mae", "random_init", "raw_pixels"]
    assert table["top-1"].between(10, 100).all()  # above chance (10 classes) and a real percentage
    assert (res / "figures/pretrain_loss.png").stat().st_size > 10_000
    for task in ("knn", "finetune"):
        table = pd.read_csv(res / f"tables/{task}.csv")
        assert list(table["run"]) == (["mae", "random_init", "raw_pixels"] if task == "knn" else ["mae", "random_init"])
        assert table["top-1"].between(5, 100).all()
    partial = pd.read_csv(res / "tables/partial_finetune.csv")
    assert sorted(zip(partial["run"], partial["tuned blocks"])) == [("mae", 0), ("mae", 1), ("random_init", 0),
                                                                    ("random_init", 1)]
    assert json.loads((res / "eval/mae/knn-ep1.json").read_text())["pretrain_epochs"] == 1
    assert json.loads((res / "eval/mae/knn.json").read_text())["pretrain_epochs"] == 2
    assert not (res / "eval/mae/knn-ep2.json").exists(), "the last epoch's result is the final checkpoint's"
    for task, metric in (("ade20k", "mIoU"), ("coco", "bbox_AP")):
        table = pd.read_csv(res / f"tables/{task}.csv")
        assert list(table["run"]) == ["mae"] and table[metric].between(0, 100).all()
        assert (res / f"eval/mae/{task}_examples.png").stat().st_size > 5_000
    # the figures that look inside the encoders: every run drawn (raw pixels have no attention)
    logs = res / "logs/report"
    assert "[feature_maps] drew mae, random_init, raw_pixels\n" in (logs / "feature_maps.log").read_text()
    assert "[attention_maps] drew mae, random_init\n" in (logs / "attention_maps.log").read_text()
    for name in ("accuracy_vs_epochs", "partial_finetune", "feature_maps", "attention_maps"):
        assert (res / f"figures/{name}.png").stat().st_size > 10_000 and (res / f"figures/{name}.pdf").exists()
    second = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in second.stdout + second.stderr


def test_slurm_profile_dry_run_on_the_paper_config_shows_pretrain_resources(tmp_path):
    """profiles/slurm + workflow/configs/paper.yaml: every trained run asks for one 8-GPU node, the
    untrained baseline for nothing special."""
    result = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--profile", str(ROOT / "profiles" / "slurm"),
                             "--configfile", str(ROOT / "workflow" / "configs" / "paper.yaml"), "-n"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    blocks = [b for b in out.split("\n\n") if "\nrule pretrain:" in "\n" + b]
    assert len(blocks) == 23   # every trained run of paper.yaml (incl. MAE ViT-B 300 and CMAE ViT-L 1600 ep)
    baseline = next(b for b in out.split("\n\n") if "\nrule baseline_encoder:" in "\n" + b)
    assert "run=random_init_b16" in baseline and "gpu=" not in baseline and "--launch" not in baseline
    for block in blocks:
        resources = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
        for expected in ("gpu=8", "cpus_per_task=96", "mem_mb=491520", "runtime=4320"):
            assert expected in resources, resources
    shard = next(b for b in out.split("\n\n") if "\nrule shard:" in "\n" + b)
    assert "threads: 8" in shard or "runtime=120" in shard


def kill_everything_under(root: Path) -> None:
    """SIGKILL every process working in `root` or naming it: Snakemake and the jobs it started."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(proc / "cwd")
                if str(root) in cmdline or cwd == str(root) or cwd.startswith(f"{root}/"):
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                continue


@pytest.mark.slow
def test_kill_9_of_snakemake_mid_pretrain_then_snakemake_again_resumes(tmp_path):
    """kill -9 of Snakemake and its pretrain job mid-epoch; `--unlock`, `snakemake` again: the run
    resumes from its newest state and ends with the weights of an uninterrupted run (CPU, same seed)."""
    cfg = tiny_config()
    fmnist_only(cfg)
    cfg["run_defaults"].update(epochs=6, checkpoint_epochs=[])  # 36 steps, a state every 4
    target = "results/pretrain/mae/checkpoint.pt"
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for workdir in (reference, killed):
        workdir.mkdir()
        write_config(workdir / "config.yaml", cfg)
    snakemake(reference, target)

    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(killed),
           "--configfile", str(killed / "config.yaml"), "--cores", "2", target]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    resume = killed / "results/pretrain/mae/resume"
    deadline = time.time() + 300
    def newest_state() -> int:
        return max((int(p.stem.split("-")[1]) for p in resume.glob("step-*.pt")), default=0)

    while newest_state() < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # two states written: mid-run, past the first epoch (6 steps)
    kill_everything_under(killed)
    proc.wait()
    states = sorted(resume.glob("step-*.pt"))
    assert states and not (killed / target).exists(), "the kill must land mid-run"
    snakemake(killed, "--unlock")
    rerun = snakemake(killed, target)
    assert "pretrain" in rerun.stdout + rerun.stderr
    summary = json.loads((killed / "results/pretrain/mae/summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 36
    wa, wb = (torch.load(d / target, map_location="cpu", weights_only=True)["encoder"] for d in (reference, killed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights must equal the uninterrupted run's"


def test_a_study_with_an_imported_run_goes_through_every_classification_evaluation_and_the_tables(tmp_path):
    """Released weights as a run: import job (not pretraining) -> features, linear probe, kNN, finetune,
    partial finetune -> the task tables, a paper table and the compute table with the file's sha256; a
    changed file re-imports."""
    import checkpoint_files as F
    from cmim.train.checkpoint import file_sha256

    source = F.write("mae-training", F.encoder(), tmp_path)          # MAE's checkpoint-<E>.pth layout
    cfg = fmnist_only(tiny_config(methods=()))
    cfg["runs"] = {"released": {"method": "imported", "epochs": 1600, "checkpoint": {"path": str(source)}}}
    cfg["tables"] = {"mae-reference": {"rows": {"vit_b": "released"}}, "compute": {}}
    cfg["report"] = {"scale": "small"}                               # a tiny encoder in a ViT-B/16 row
    write_config(tmp_path / "config.yaml", cfg)
    plan = snakemake(tmp_path, "-n").stdout
    assert "rule import_checkpoint:" in plan and "rule pretrain:" not in plan and "rule baseline_encoder:" not in plan
    snakemake(tmp_path)
    res, sha = tmp_path / "results", file_sha256(source)
    log = (res / "logs/import_checkpoint/released.log").read_text()
    assert "[import] format mae" in log and "[import] missing encoder keys: none" in log
    assert json.loads((res / "pretrain/released/import_report.json").read_text())["source"]["sha256"] == sha
    for task in ("linear_probe", "knn", "finetune", "partial_finetune-k0", "partial_finetune-k1"):
        result = json.loads((res / f"eval/released/{task}.json").read_text())
        assert result["checkpoint"]["source"] == {"path": str(source), "sha256": sha, "format": "mae"}, task
        assert result["method"] == "imported" and result["pretrain_epochs"] == 1600
        assert 10 < result["metrics"]["top1"] <= 100, (task, result["metrics"])   # above chance on 10 classes
    for table in ("linear_probe", "knn", "finetune", "partial_finetune"):
        assert "released" in set(pd.read_csv(res / f"tables/{table}.csv")["run"]), table
    compute = pd.read_csv(res / "tables/compute.csv")
    row = compute[compute["job"] == "released"].iloc[0]
    assert row["kind"] == "import" and row["source_sha256"] == sha
    assert set(compute[compute["job"].str.startswith("released/")]["source_sha256"]) == {sha}
    assert sha in (res / "tables/compute.md").read_text()
    reference = (res / "tables/mae-reference.md").read_text()
    assert "released" in reference and "1600" in reference
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(tmp_path, "-n"))
    source.write_bytes(source.read_bytes())                           # a new download of the file
    os.utime(source, (time.time() + 5, time.time() + 5))
    rerun = snakemake(tmp_path, "-n").stdout
    assert "rule import_checkpoint:" in rerun
