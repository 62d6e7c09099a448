"""The online kNN monitor of pretraining: every few epochs the encoder being trained classifies a fixed
labelled subset with the kNN task's own code, so a run that is not learning shows at epoch 50, not
at epoch 1600 (solo-learn's and lightly's online monitors do the same).

The same number as the kNN task on that epoch's checkpoint, never a copy of its code: the encoder's
weights go into a fresh `build_encoder` (what the kNN task loads from the checkpoint), the run's probe
feature of the centre views of the first N train / val images in the shards' fixed order is
extracted by cmim.evals.features (as the features rule with max_train_samples / max_val_samples = N
and the same loader worker count), and cmim.evals.knn.knn_accuracy scores it with the study's kNN
protocol. With DDP each rank extracts every world_size-th batch (as cmim.evals.classify scores),
rank 0 gathers the features once and scores; the other ranks return nothing.

Off, with one log line, where the dataset has no labels or no val split was given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cmim.data.manifest import class_names, read_manifest
from cmim.evals.features import FeatureExtractor, extract
from cmim.evals.knn import knn_accuracy
from cmim.options import from_dict
from cmim.options.evals import KnnOptions
from cmim.options.monitor import MonitorOptions


@dataclass(frozen=True)
class MonitorJob:
    """What a pretraining job file says of the monitor (cmim.launch.pretrain_job)."""

    options: MonitorOptions
    knn: KnnOptions
    val_manifest: Path

    @classmethod
    def from_block(cls, block: dict | None) -> MonitorJob | None:
        """{"val_manifest": path, "knn": {k, temperature}, **the monitor block}; None = no monitor."""
        if not block or not block.get("val_manifest"):
            return None
        opts = {k: v for k, v in block.items() if k not in ("val_manifest", "knn")}
        knn = from_dict(KnnOptions, block.get("knn") or {}, "monitor.knn", pick=True)
        return cls(from_dict(MonitorOptions, opts, "monitor"), knn, Path(block["val_manifest"]))


def gather_in_order(parts: list[tuple[int, torch.Tensor, torch.Tensor]], world_size: int,
                    rank: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every rank's (batch index, features, labels) to rank 0, concatenated in batch order (the order
    one process reads them in); None on the other ranks. One collective per call."""
    if world_size > 1 and dist.is_initialized():
        gathered = [None] * world_size if rank == 0 else None
        dist.gather_object(parts, gathered, dst=0)
        if rank != 0:
            return None
        parts = [p for rank_parts in gathered for p in rank_parts]
    parts = sorted(parts, key=lambda p: p[0])
    if not parts:
        raise ValueError("the monitor's subset is empty")
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


class _Share:
    """This rank's batches of a split (batch i goes to rank i mod world_size), remembering their indices."""

    def __init__(self, batches, world_size: int, rank: int) -> None:
        self.batches, self.world_size, self.rank, self.sizes = batches, world_size, rank, []

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i % self.world_size == self.rank:
                self.sizes.append((i, len(batch["labels"])))
                yield batch


class KnnMonitor:
    """Called by PretrainTask.epoch_end on every rank; returns {knn_top1, [knn_top5], monitor_s} on rank 0."""

    def __init__(self, run: dict, train_manifest: Path, job: MonitorJob) -> None:
        self.run, self.train_manifest, self.job = run, Path(train_manifest), job
        self.epochs = set(job.options.epochs(run["epochs"]))
        self.encoder = None
        self.num_classes = len(class_names(read_manifest(self.train_manifest)))
        self.off = None if self.num_classes >= 2 else \
            f"[monitor] {run['run']}: off, {train_manifest} has no labels ({self.num_classes} class(es))"

    def due(self, ctx, epoch: int) -> bool:
        if self.off and ctx.env.is_main and epoch == 1:
            ctx.log(self.off)
        return not self.off and epoch in self.epochs

    def _share(self, ctx, extractor, manifest: Path, samples: int, what: str):
        env, data = ctx.env, self.run["data"]
        share = _Share(_eval_batches(manifest, data, self.job.options.batch_size, ctx.num_workers, samples),
                       env.world_size, env.rank)
        feats, labels = extract_from(extractor, share, env.device, what)
        parts, start = [], 0
        for index, size in share.sizes:    # split this rank's features back into its batches
            parts.append((index, feats[start:start + size], labels[start:start + size]))
            start += size
        return gather_in_order(parts, env.world_size, env.rank)

    def __call__(self, ctx, encoder: torch.nn.Module, epoch: int) -> dict | None:
        from cmim.models.vit import build_encoder

        started = time.perf_counter()
        if self.encoder is None:       # a frozen copy, as the kNN task loads the epoch's checkpoint
            with torch.random.fork_rng(devices=[]):      # its init draws nothing from training's generator
                self.encoder = build_encoder(self.run["encoder"])
        self.encoder.load_state_dict(encoder.state_dict())
        data, opts = self.run["data"], self.job.options
        extractor = FeatureExtractor(self.encoder, self.run["probe_feature"], data["mean"], data["std"])
        train = self._share(ctx, extractor, self.train_manifest, opts.train_samples, "monitor train")
        val = self._share(ctx, extractor, self.job.val_manifest, opts.val_samples, "monitor val")
        if not ctx.env.is_main:
            return None
        scores = knn_accuracy(*train, *val, self.num_classes, k=self.job.knn.k, temperature=self.job.knn.temperature)
        seconds = time.perf_counter() - started
        ctx.log(f"[monitor] {self.run['run']} epoch {epoch}: kNN top-1 {scores['top1']:.2f} "
                f"({len(train[1])} train / {len(val[1])} val images, k {self.job.knn.k}), {seconds:.1f} s")
        return {**{f"knn_{k}": v for k, v in scores.items()}, "monitor_s": round(seconds, 3)}


def _eval_batches(manifest: Path, data: dict, batch_size: int, num_workers: int, samples: int):
    """The centre views of the split's first `samples` images, as the features rule reads them."""
    from cmim.data.loader import eval_loader
    from cmim.data.views import eval_view

    return eval_loader(manifest, eval_view(data["image_size"], data["eval_crop_pct"]), batch_size=batch_size,
                       num_workers=num_workers, max_samples=samples)


def extract_from(extractor: FeatureExtractor, batches, device, what: str):
    """cmim.evals.features.extract, or empty tensors for a rank whose share is empty."""
    try:
        return extract(extractor, batches, device, log=lambda m: None, what=what)
    except ValueError:   # no batch fell to this rank (a subset smaller than world_size batches)
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
