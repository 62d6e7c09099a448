"""The keys that fix a training loop, and the lr rule every recipe states its lr in.

Pretraining reads them from the run, finetuning / segmentation / detection from their
`evaluations.<task>` block (each options class's `loop()`), so one vocabulary serves every trained
job (cmim.train.engine.Trainer).
"""

from __future__ import annotations

from dataclasses import dataclass

from cmim.options import from_dict


def absolute_lr(base_lr: float, batch_size: int) -> float:
    """lr = base_lr x batch_size / 256, batch_size = the global effective batch (all ranks x all
    accumulation steps). MAE, CAN and CMAE all scale this way; keep base_lr when shrinking a batch."""
    return base_lr * batch_size / 256


def base_lr_of(lr: float, batch_size: int) -> float:
    """base_lr = lr x 256 / batch_size: the inverse of `absolute_lr`. The dense recipes (mmseg's
    UperNet, detectron2's ViTDet) quote the absolute lr of their batch; stored as a base lr, the loop
    reaches exactly that lr at that batch (and the same lr at any other: it is absolute)."""
    return lr * 256 / batch_size


@dataclass(frozen=True)
class LoopOptions:
    """The loop keys of a run or a trained evaluation; each is a run key of the schema with its default."""

    epochs: int                                  # passes of samples_per_epoch (ignored when `iters` is set)
    batch_size: int                              # global batch: all ranks x all accumulation steps
    base_lr: float                               # lr = base_lr x batch_size / 256
    warmup_epochs: float = 0.0                   # linear warmup, per iteration
    warmup_iters: int | None = None              # warmup in optimiser steps (overrides warmup_epochs)
    iters: int | None = None                     # total optimiser steps (iteration schedules: mmseg's 160k)
    samples_per_epoch: int | None = None         # None = the train split's size
    accum_steps: int = 1
    min_lr: float = 0.0
    lr_schedule: str = "cosine"                  # cosine | poly | step
    poly_power: float = 1.0                      # poly: (1 - t)^power
    lr_drops: tuple[float, ...] = ()             # step: fractions of the run where lr is multiplied by 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = None
    precision: str = "auto"
    compile: str = "off"
    seed: int = 0
    checkpoint_every_steps: int = 500
    log_every_steps: int = 50
    checkpoint_epochs: tuple[int, ...] = ()      # epochs whose model the task exports (pretraining)

    @classmethod
    def of_run(cls, run: dict) -> LoopOptions:
        """The loop keys of a resolved run (the rest of the run belongs to its method)."""
        return from_dict(cls, run, f"runs.{run.get('run', '<run>')}", pick=True)
