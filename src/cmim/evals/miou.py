"""Semantic-segmentation scores as mmseg's IoUMetric computes them for ADE20K (METHODS.md 2.3).

Why a confusion matrix: mIoU on ADE20K is a *dataset-level* number: intersections and unions are
summed over every pixel of the split first, and only then divided per class. Averaging per image
or per batch (torchmetrics' `MeanIoU`) gives a different, higher-variance number. So one int64
confusion matrix [K, K] (rows ground truth, columns prediction) is accumulated over all updates,
summed over ranks once at the end, and everything is read from it:

- IoU_c = TP / (TP + FP + FN); a class with zero union (absent from both prediction and ground
  truth over the whole split) is NaN, reported as None, and left out of the mean (nanmean);
- Acc_c = TP / (TP + FN) (None for a class absent from the ground truth); mAcc = nanmean;
- aAcc = trace / total valid pixels.
All in percent. Pixels whose target is `ignore_index` (ADE20K: 255, the reduced "other") are
dropped before counting.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


class SegmentationMetric:
    """Accumulate pred / target label maps; `compute()` gives mIoU, mAcc, aAcc and per-class values."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion = torch.zeros_like(self.confusion)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: int64 [B, H, W] (or any equal shapes); pred in [0, K), target in [0, K) or ignore."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape "
                             "(resize the prediction to the label first)")
        k = self.num_classes
        valid = target != self.ignore_index
        t, p = target[valid].long(), pred[valid].long()
        if t.numel() and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"target values must be in [0, {k}) or {self.ignore_index}; found {t.min()}..{t.max()}")
        if p.numel() and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"predictions must be in [0, {k}); found {p.min()}..{p.max()}")
        counts = torch.bincount(k * t + p, minlength=k * k).reshape(k, k)
        if self.confusion.device != counts.device:  # follow the data (CUDA for an NCCL all_reduce)
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts

    def all_reduce(self) -> None:
        """Sum the matrix over ranks (torch.distributed, when initialised); a no-op otherwise."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """{"mIoU", "mAcc", "aAcc"} in percent (NaN if nothing was counted), "per_class_iou" and
        "per_class_acc": lists of K percentages with None where undefined."""
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        gt, predicted = cm.sum(1), cm.sum(0)
        union = gt + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan) * 100
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.nan) * 100
        total = gt.sum()
        return {"mIoU": _nanmean(iou), "mAcc": _nanmean(acc),
                "aAcc": float(tp.sum() / total * 100) if total > 0 else math.nan,
                "per_class_iou": _listed(iou), "per_class_acc": _listed(acc)}


def _nanmean(x: Tensor) -> float:
    kept = x[~x.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def _listed(x: Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in x.tolist()]
