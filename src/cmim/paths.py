"""Every output path of the pipeline, built in one place.

The Snakefile, the CLI and the tests all ask this module, so a file contract (DESIGN section 2)
is spelled once. All paths are relative to the working directory (Snakemake's --directory).
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")


def demo_root(dataset: str) -> Path:
    """Where a demo-ade20k / demo-coco dataset is generated (in the real ADE20K / COCO layout)."""
    return RESULTS / "demo" / dataset


def demo_done(dataset: str) -> Path:
    """Marker written last by the scene generator: the tree under demo_root is complete."""
    return demo_root(dataset) / "generated.json"


def shard_dir(dataset: str, split: str) -> Path:
    return RESULTS / "shards" / dataset / split


def manifest(dataset: str, split: str) -> Path:
    """Per split: shards, per-shard count and sha256, classes, skipped samples with reasons."""
    return shard_dir(dataset, split) / "manifest.json"


def pretrain_dir(run: str) -> Path:
    return RESULTS / "pretrain" / run


def run_config(run: str) -> Path:
    """The run's fully resolved config: a declared input of everything downstream of the run."""
    return pretrain_dir(run) / "config.yaml"


def final_checkpoint(run: str) -> Path:
    """Encoder weights + encoder shape at the end of training (written last, atomically)."""
    return pretrain_dir(run) / "checkpoint.pt"


def resume_dir(run: str) -> Path:
    """Rolling training-state checkpoints (model, optimiser, schedule, RNG, data position)."""
    return pretrain_dir(run) / "resume"


def epoch_checkpoint(run: str, epoch: int) -> Path:
    return pretrain_dir(run) / "epochs" / f"ckpt-{epoch}.pt"


def metrics(run: str) -> Path:
    return pretrain_dir(run) / "metrics.jsonl"


def summary(run: str) -> Path:
    return pretrain_dir(run) / "summary.json"


def launcher_dir(run: str) -> Path:
    """submitit's job folder (pickles, per-rank logs); must be on a shared filesystem on SLURM."""
    return pretrain_dir(run) / "submitit"


def eval_result(run: str, task: str) -> Path:
    return RESULTS / "eval" / run / f"{task}.json"


def table(name: str, ext: str) -> Path:
    return RESULTS / "tables" / f"{name}.{ext}"


def figure(name: str, ext: str = "png") -> Path:
    return RESULTS / "figures" / f"{name}.{ext}"


def log(stage: str, name: str) -> Path:
    return RESULTS / "logs" / stage / f"{name}.log"
