"""What reruns, through Snakemake on a finished tiny study (issue 12, faults 14, 15, 8, 12).

- Where and how fast a job runs (the launch block) never reruns anything; what it computes (a run's
  base_lr, a probe's epochs) reruns exactly the jobs that depend on it (fault 14, both directions).
- One nested key can be overridden for one invocation: `--config 'launch={"timeout_min":600}'`
  (Snakemake hands the nested value over as the string '600'; it is coerced to the schema's type).
- A study without an `evaluations` block runs no evaluation (fault 8).
- Own data with 3 classes goes through the linear probe (top-k only for k <= classes; fault 12).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fault_runs import RUN
from tiny import ROOT, fmnist_only, tiny_config, write_config

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TARGETS = ["results/tables/linear_probe.md", "results/tables/linear_probe.csv", "results/figures/pretrain_loss.png"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if check and result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (workdir / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
                             f"\n{logs}")
    return result


def planned(result: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run plans."""
    jobs = set()
    text = result.stdout + result.stderr
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", "\n" + text):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        if head:
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            jobs.add((head.group(1), wildcards.group(1).strip() if wildcards else ""))
    return jobs


def nothing_to_do(result: subprocess.CompletedProcess) -> bool:
    return "Nothing to be done" in result.stdout + result.stderr


def small_study() -> dict:
    """tests/tiny.py's study cut to one trained run, one baseline and the linear probe (8 steps each)."""
    cfg = tiny_config()
    fmnist_only(cfg)
    cfg["run_defaults"].update(RUN)
    cfg["runs"] = {"mae": cfg["runs"]["mae"], "random_init": {"method": "random_init"}}
    cfg["evaluations"] = {"linear_probe": cfg["evaluations"]["linear_probe"]}
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny study run to the end (shard, pretrain, baseline, probes, table, loss figure)."""
    workdir = tmp_path_factory.mktemp("finished")
    write_config(workdir / "config.yaml", small_study())
    snakemake(workdir, *TARGETS)
    assert nothing_to_do(snakemake(workdir, "-n", *TARGETS))
    return workdir


@pytest.mark.slow
def test_changing_where_a_study_trains_reruns_nothing(finished):
    cfg = small_study()
    cfg["launch"].update(launcher="slurm", partition="gpu", account="lab", timeout_min=600, gpus_per_node=8,
                         cpus_per_task=12, num_workers=6, max_requeues=9)
    result = snakemake(finished, "-n", *TARGETS, "--configfile", str(write_config(finished / "moved.yaml", cfg)))
    assert nothing_to_do(result), f"a launch change replans {sorted(planned(result))}"


@pytest.mark.slow
def test_changing_the_launcher_on_the_command_line_reruns_nothing(finished):
    result = snakemake(finished, "-n", *TARGETS, "--config", 'launch={"launcher":"local"}')
    assert nothing_to_do(result), f"--config launch=... replans {sorted(planned(result))}"


@pytest.mark.slow
def test_changing_a_runs_base_lr_reruns_exactly_that_run_and_what_depends_on_it(finished):
    downstream = planned(snakemake(finished, "-n", *TARGETS, "--forcerun", "results/pretrain/mae/config.yaml"))
    assert ("pretrain", "run=mae") in downstream
    cfg = small_study()
    cfg["runs"]["mae"]["base_lr"] = 2e-3
    result = snakemake(finished, "-n", *TARGETS, "--configfile", str(write_config(finished / "lr.yaml", cfg)))
    jobs = planned(result)
    assert jobs == downstream, f"planned {sorted(jobs)}, depends on run mae: {sorted(downstream)}"
    assert not any("random_init" in w for _, w in jobs) and not any(r in ("shard", "demo_data") for r, _ in jobs)


@pytest.mark.slow
def test_changing_a_probes_epochs_reruns_only_the_probes(finished):
    probes = sorted(str(p.relative_to(finished)) for p in (finished / "results" / "eval").glob("*/linear_probe*.json"))
    assert len(probes) >= 2
    downstream = planned(snakemake(finished, "-n", *TARGETS, "--forcerun", *probes))
    cfg = small_study()
    cfg["evaluations"]["linear_probe"]["epochs"] += 1
    result = snakemake(finished, "-n", *TARGETS, "--configfile", str(write_config(finished / "probe.yaml", cfg)))
    jobs = planned(result)
    assert jobs == downstream, f"planned {sorted(jobs)}, depends on the probes: {sorted(downstream)}"
    assert {r for r, _ in jobs} & {"pretrain", "baseline_encoder", "shard", "features", "run_config"} == set()


@pytest.mark.slow
def test_a_nested_launch_key_is_overridden_for_one_invocation(finished):
    """`--config 'launch={"timeout_min":600}'`: accepted (coerced to an integer), used for the jobs'
    resources, and not a reason to rerun anything."""
    override = ["--config", 'launch={"timeout_min":600}']
    result = snakemake(finished, "-n", *TARGETS, *override)
    assert nothing_to_do(result), f"replans {sorted(planned(result))}"
    target = "results/pretrain/mae/checkpoint.pt"
    forced = snakemake(finished, "-n", target, "--forcerun", target, *override)
    block = next(b for b in (forced.stdout + forced.stderr).split("\n\n") if "rule pretrain:" in b)
    assert re.search(r"resources: .*runtime=600\b", block), block
    bad = snakemake(finished, "-n", *TARGETS, "--config", 'launch={"timeout_min":"ten"}', check=False)
    assert bad.returncode != 0 and "timeout_min" in bad.stdout + bad.stderr


def test_a_study_without_evaluations_runs_no_evaluation(tmp_path):
    cfg = small_study()
    del cfg["evaluations"]
    write_config(tmp_path / "config.yaml", cfg)
    jobs = planned(snakemake(tmp_path, "-n"))
    rules = {r for r, _ in jobs}
    assert "pretrain" in rules
    evaluation_rules = {"features", "linear_probe", "linear_probe_epoch", "knn", "knn_epoch", "finetune",
                        "partial_finetune", "ade20k", "coco", "probe_table"}
    assert rules & evaluation_rules == set(), f"evaluations planned although none is listed: {sorted(rules)}"


def three_class_folder(root: Path, per_class: dict[str, int]) -> Path:
    """An ImageNet-style folder <root>/<split>/<class>/<image>.png with 3 classes told apart by colour."""
    rng = np.random.default_rng(0)
    colours = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}
    for split, n in per_class.items():
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 30, size=(40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


@pytest.mark.slow
def test_own_data_with_three_classes_goes_through_the_linear_probe(tmp_path):
    root = three_class_folder(tmp_path / "mine", {"train": 16, "val": 8})
    cfg = small_study()
    cfg["datasets"] = {"mine": {"format": "imagefolder", "root": str(root), "image_size": 32, "eval_crop_pct": 1.0}}
    cfg["run_defaults"]["dataset"] = "mine"
    cfg["runs"] = {"random_init": {"method": "random_init"}}
    cfg["evaluations"]["linear_probe"].update(epochs=2, warmup_epochs=0, batch_size=16)
    write_config(tmp_path / "config.yaml", cfg)
    snakemake(tmp_path, "results/eval/random_init/linear_probe.json", "results/tables/linear_probe.csv")
    result = json.loads((tmp_path / "results/eval/random_init/linear_probe.json").read_text())
    metrics = result.get("metrics", result)
    assert 0 <= metrics["top1"] <= 100
    assert "top5" not in metrics, "top-5 of 3 classes is meaningless (always 100)"
    assert yaml.safe_load((tmp_path / "results/pretrain/random_init/config.yaml").read_text())["dataset"] == "mine"
