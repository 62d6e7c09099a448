"""monitor: the online kNN monitor of pretraining (cmim.tasks.monitor), with its rule of which epochs it runs at.

Why a block of its own, outside the runs: it watches a run, it does not decide its weights, so it is
not part of a run's identity (changing it never retrains anything). It reaches the pretraining jobs
through $CMIM_MONITOR, as the launch block reaches them through $CMIM_LAUNCH.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MonitorOptions:
    """monitor: DINO's weighted kNN on a fixed labelled subset, every few epochs of pretraining."""

    every_epochs: int = 10                 # run after every N-th epoch and after the last one (0 = off)
    train_samples: int = 10000             # the first N train images in the shards' fixed order: the kNN's memory
    val_samples: int = 2000                # the first N val images: the queries scored
    batch_size: int = 256                  # images per forward pass

    def __post_init__(self) -> None:
        if self.every_epochs < 0:
            raise ValueError(f"every_epochs must be >= 0 (0 = off), got {self.every_epochs}")
        if min(self.train_samples, self.val_samples, self.batch_size) < 1:
            raise ValueError("train_samples, val_samples and batch_size must be >= 1")

    def epochs(self, total_epochs: int) -> list[int]:
        """The (1-based) epochs after which the monitor runs: every `every_epochs`-th and the last."""
        if not self.every_epochs or total_epochs < 1:
            return []
        return sorted({e for e in range(1, total_epochs + 1) if e % self.every_epochs == 0} | {total_epochs})
