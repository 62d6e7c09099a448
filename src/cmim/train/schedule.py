"""Derived training quantities, each from one named function whose docstring holds the formula
(the lr scaling rule is cmim.options.loop.absolute_lr, beside the keys it reads)."""

from __future__ import annotations

import math


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


SCHEDULES = ("cosine", "poly", "step")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0, *,
          kind: str = "cosine", power: float = 1.0, drops: tuple[float, ...] = ()) -> float:
    """Per-iteration linear warmup from 0 to peak_lr over warmup_steps, then, with t = progress after
    warmup in [0, 1]:
      cosine (MAE, CAN, CMAE, finetuning): min_lr + (peak_lr - min_lr) x (1 + cos(pi t)) / 2;
      poly (mmseg's segmentation schedule): min_lr + (peak_lr - min_lr) x (1 - t)^power;
      step (detectron2's ViTDet schedule): peak_lr x 0.1^(number of `drops` fractions of the whole
        run, warmup included, already passed); min_lr is not used.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "poly":
        return min_lr + (peak_lr - min_lr) * (1.0 - t) ** power
    if kind == "step":
        passed = sum(step >= round(f * total_steps) for f in drops)
        return peak_lr * 0.1**passed
    raise ValueError(f"unknown lr schedule {kind!r}; choose one of {SCHEDULES}")
