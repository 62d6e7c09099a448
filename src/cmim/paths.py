"""Every output path of the pipeline, built in one place.

The Snakefile, the CLI and the tests all ask this module, so a file contract (DESIGN section 2)
is spelled once. All paths are relative to the working directory (Snakemake's --directory).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class RunFiles:
    """The files of one training job under its folder: a pretraining run (results/pretrain/<run>/)
    or a training evaluation (results/eval/<run>/<task>/: finetune, segmentation, detection)."""
    root: Path

    @property
    def config(self) -> Path:          # the fully resolved run config: an input of everything downstream
        return self.root / "config.yaml"

    @property
    def checkpoint(self) -> Path:      # final encoder + its shape, written last
        return self.root / "checkpoint.pt"

    @property
    def summary(self) -> Path:         # wall time, images seen, img/s, GPU-hours, peak memory, MFU
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:         # one JSON row per logged step (copied from resume/ at the end)
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> Path:          # TensorBoard's events.out.tfevents.* (cmim.train.board): in the job folder
        return self.root               # itself, so `tensorboard --logdir results` shows one run per job

    @property
    def reconstructions(self) -> Path:  # pretraining: a few decoder outputs for the report (cmim.methods.visualize)
        return self.root / "reconstructions.pt"

    @property
    def import_report(self) -> Path:   # imported runs: which keys of the source were loaded, ignored, missing
        return self.root / "import_report.json"

    @property
    def resume(self) -> Path:          # rolling training states; not a rule output, survives reruns
        return self.root / "resume"

    @property
    def resume_metrics(self) -> Path:  # metrics.jsonl while training (truncated on resume)
        return self.resume / "metrics.jsonl"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """Declared output (rule epoch_checkpoint): a hard link to resume_epoch_checkpoint(epoch)."""
        return self.epochs / f"ckpt-{epoch}.pt"

    def resume_epoch_checkpoint(self, epoch: int) -> Path:
        """Where training exports epoch E: under resume/, which Snakemake never deletes before a rerun."""
        return self.resume / "epochs" / f"ckpt-{epoch}.pt"

    @property
    def job(self) -> Path:             # the job description the launcher hands to every rank
        return self.root / "job.yaml"

    @property
    def submitit(self) -> Path:        # submitit job folder: pickles and per-rank logs
        return self.root / "submitit"


def run_files(run: str) -> RunFiles:
    return RunFiles(RESULTS / "pretrain" / run)


def eval_result(run: str, task: str) -> Path:
    """results/eval/<run>/<task>.json, task = linear_probe, knn, finetune, partial_finetune-k<K>,
    ade20k, coco, or <task>-ep<E> for an epoch checkpoint."""
    return RESULTS / "eval" / run / f"{task}.json"


def eval_examples(run: str, task: str) -> Path:
    """A dense task's prediction images (image | ground truth | prediction) for the report."""
    return RESULTS / "eval" / run / f"{task}_examples.png"


def eval_job_files(run: str, task: str) -> RunFiles:
    """The training folder of a trained evaluation (resume states, metrics, summary, final model)."""
    return RunFiles(RESULTS / "eval" / run / task)


def features(run: str, dataset: str, checkpoint: str) -> Path:
    """Frozen features of a checkpoint ('final' or 'ep<E>') on a dataset's train and val splits."""
    return RESULTS / "features" / run / f"{dataset}-{checkpoint}.pt"


def table(name: str, ext: str) -> Path:
    return RESULTS / "tables" / f"{name}.{ext}"


def figure(name: str, ext: str = "png") -> Path:
    return RESULTS / "figures" / f"{name}.{ext}"


def summary(ext: str) -> Path:
    """What the study shows, first: results/summary.rst (the report's landing page) and .md."""
    return RESULTS / f"summary.{ext}"


def log(stage: str, name: str) -> Path:
    return RESULTS / "logs" / stage / f"{name}.log"
