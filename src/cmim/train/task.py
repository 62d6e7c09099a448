"""What a training job is, to the one loop (cmim.train.engine.Trainer).

Pretraining, end-to-end and partial finetuning, semantic segmentation and detection are all
training jobs with the same needs: AdamW groups (layer decay included), a schedule, accumulation,
autocast, DDP, resume states, a NaN guard, progress lines, metrics.jsonl and summary.json. The loop
owns all of that once; a task contributes only what differs (DESIGN section 7): its model (whose
`forward(batch)` returns every named loss term plus "total"), its data stream, its optimiser
groups, what it exports and what it scores at the end.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from cmim.options.loop import LoopOptions, absolute_lr
from cmim.train import schedule


@dataclass(frozen=True)
class Plan:
    """The numbers that fix a run's length and learning rate (derived once, logged once)."""

    samples_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    micro_batch: int
    peak_lr: float

    @classmethod
    def of(cls, opts: LoopOptions, num_samples: int, world_size: int) -> Plan:
        samples = opts.samples_per_epoch or num_samples
        per_epoch = schedule.steps_per_epoch(samples, opts.batch_size)
        if opts.iters is not None:
            total, epochs = opts.iters, math.ceil(opts.iters / per_epoch)
        else:
            total, epochs = per_epoch * opts.epochs, opts.epochs
        warmup = opts.warmup_iters if opts.warmup_iters is not None else round(opts.warmup_epochs * per_epoch)
        return cls(samples_per_epoch=samples, steps_per_epoch=per_epoch, epochs=epochs, total_steps=total,
                   warmup_steps=min(warmup, total),
                   micro_batch=schedule.micro_batch_size(opts.batch_size, world_size, opts.accum_steps),
                   peak_lr=absolute_lr(opts.base_lr, opts.batch_size))

    def lr_at(self, step: int, opts: LoopOptions) -> float:
        return schedule.lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, opts.min_lr,
                              kind=opts.lr_schedule, power=opts.poly_power, drops=opts.lr_drops)


@dataclass
class Context:
    """What a task may use from the running job (set by the Trainer before training starts)."""

    env: object                                  # cmim.train.distributed.DistEnv
    files: object                                # cmim.paths.RunFiles of this job's folder
    num_workers: int = 0
    log: object = print
    amp: torch.dtype | None = None               # the autocast dtype of training (None = fp32)
    extra: dict = field(default_factory=dict)


class TrainTask(abc.ABC):
    """One kind of training job. Subclasses set `name`, `options` and `model` in __init__."""

    name: str = "train"
    options: LoopOptions
    model: nn.Module

    # ------------------------------------------------------------------ what the job is
    @abc.abstractmethod
    def identity(self) -> dict:
        """Everything that decides the result (hashed): a resume state saved under another identity
        is moved aside instead of resumed. Never include where or how fast it runs."""

    def manifests(self) -> list:
        """The shard manifests the job reads (their shards are verified once before training)."""
        return []

    @abc.abstractmethod
    def num_train_samples(self) -> int:
        """Size of the train split (the default epoch length)."""

    def describe(self) -> str:
        """The job's name in progress lines."""
        return self.name

    def summary_fields(self) -> dict:
        """Extra keys of summary.json (run id, method, ...)."""
        return {}

    def start_warnings(self) -> list[str]:
        """Problems of the input that do not stop the job, logged once as it starts (rank 0)."""
        return []

    # ------------------------------------------------------------------ training
    def parameter_groups(self) -> list[dict]:
        """AdamW groups of `self.model`; a group may carry `lr_scale` (layer decay)."""
        return self.model.parameter_groups(self.options.weight_decay)

    @abc.abstractmethod
    def train_batches(self, ctx: Context, epoch: int, micro_batch: int, num_batches: int) -> Iterable[dict]:
        """Exactly `num_batches` batches of this rank for epoch `epoch`, a pure function of
        (seed, epoch, rank, worker count): a resumed run rebuilds the epoch and skips what it saw."""

    def to_device(self, batch: dict, device: torch.device) -> dict:
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def batch_images(self, batch: dict) -> int:
        """Images in one micro-batch (for images/s and FLOPs per image)."""
        return len(batch["images"])

    def analytic_flops_per_image(self, global_batch: int, fused_attention: bool = True) -> float | None:
        """Training FLOPs per image from the analytic formulas (cmim.train.flops), for compiled steps,
        which torch's FLOP counter cannot trace, booked as the counter would for the attention kernel
        the step runs; None = not modelled (no FLOPs, no MFU reported)."""
        return None

    def after_step(self, progress: float) -> None:  # noqa: B027 (optional hook)
        """After every optimiser step, progress = step / total_steps (EMA targets)."""

    # ------------------------------------------------------------------ outputs
    def epoch_end(self, ctx: Context, epoch: int, step: int) -> dict | None:
        """After epoch `epoch` (1-based) and before its resume state is written: exports and periodic
        evaluations; returned metrics are logged as an `eval` row of metrics.jsonl. All ranks call it."""
        return None

    def export(self, ctx: Context, step: int) -> None:  # noqa: B027 (optional hook)
        """Rank 0, at the very end: the job's final model file(s)."""

    def evaluate(self, ctx: Context) -> dict | None:
        """All ranks, at the very end: the final score (DDP: each rank scores its share and reduces)."""
        return None

    def write_result(self, ctx: Context, summary: dict, final: dict | None) -> None:  # noqa: B027 (optional hook)
        """Rank 0, last of all: the job's result file (the declared output of its rule), if it has one."""


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups of a model built on a ViT, with layer-wise lr decay: timm's
    `param_groups_layer_decay` on the model's `group_matcher`, which names the embeddings and then one
    group per block and nothing else, so block i of L gets layer_decay^(L - i) of the lr, the
    embeddings layer_decay^(L + 1) and everything the matcher leaves out (final norm, neck, heads) 1:
    MAE's `param_groups_lrd`, mmseg's and detectron2's ViT rates. No weight decay on the model's
    `no_weight_decay()` names, norms and biases; frozen parameters are left out. Finetuning (its
    `Classifier`), segmentation and detection all use it."""
    from timm.optim import param_groups_layer_decay

    return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                    layer_decay=layer_decay)
