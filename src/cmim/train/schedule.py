"""Derived training quantities, each from one named function whose docstring holds the formula."""

from __future__ import annotations

import math


def absolute_lr(base_lr: float, batch_size: int) -> float:
    """lr = base_lr x batch_size / 256, batch_size = the global effective batch (all ranks x all
    accumulation steps). MAE, CAN and CMAE all scale this way; keep base_lr when shrinking a batch."""
    return base_lr * batch_size / 256


def steps_per_epoch(samples_per_epoch: int, batch_size: int) -> int:
    """Optimiser steps per epoch = floor(samples_per_epoch / global batch) (the last partial batch is dropped)."""
    steps = samples_per_epoch // batch_size
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the {samples_per_epoch} samples per epoch; "
                         f"lower batch_size or raise samples_per_epoch")
    return steps


def micro_batch_size(batch_size: int, world_size: int, accum_steps: int) -> int:
    """Per-rank batch of one forward = batch_size / (world_size x accum_steps); must divide exactly."""
    per = batch_size // (world_size * accum_steps)
    if per * world_size * accum_steps != batch_size or per < 1:
        raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size} x accum_steps "
                         f"{accum_steps}; choose a batch_size that is")
    return per


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """Per-iteration linear warmup from 0 to peak_lr over warmup_steps, then half-cycle cosine to
    min_lr at total_steps: min_lr + (peak_lr - min_lr) x (1 + cos(pi x t)) / 2, t = progress after warmup."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
