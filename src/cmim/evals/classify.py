"""Top-k accuracy, for any number of classes, and a val pass shared by every classifier.

Why one place: the probe, kNN and finetuning must score the same way. Top-k is reported for each
k <= the number of classes (a 3-class dataset has top-1 only, a binary one too: top-5 would be 100%
by construction and is not reported). A class scored -inf is never a hit, wherever `topk`'s tie
order puts it (kNN scores a class no neighbour voted for so: cmim.evals.knn). Under DDP, batch b of
the val pass is scored by rank b mod world_size and the hit counts are summed, so every sample
counts exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

TOP_K = (1, 5)


def valid_ks(num_classes: int, ks=TOP_K) -> tuple[int, ...]:
    return tuple(k for k in ks if k <= num_classes) or (1,)


@torch.no_grad()
def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks=TOP_K) -> dict[int, int]:
    """Number of samples whose label is among the k highest scores, for each valid k (a -inf score is
    never a hit)."""
    ks = valid_ks(logits.shape[1], ks)
    top = logits.topk(max(ks), dim=1)
    hits = (top.indices == labels[:, None].to(top.indices.device)) & (top.values > float("-inf"))
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=TOP_K) -> dict[str, float]:
    """{"top1": %, "top5": % (only with >= 5 classes)}."""
    hits = topk_hits(logits, labels, ks)
    return {f"top{k}": 100.0 * h / max(1, len(labels)) for k, h in hits.items()}


@torch.no_grad()
def score(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict], num_classes: int,
          device: torch.device, rank: int = 0, world_size: int = 1, ks=TOP_K,
          amp: torch.dtype | None = None) -> dict[str, float]:
    """Top-k of `predict(uint8 images on device) -> logits` over a val pass (this rank's batches, summed)."""
    ks = valid_ks(num_classes, ks)
    counts = torch.zeros(len(ks) + 1, dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        if i % world_size != rank:
            continue
        images = batch["images"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = predict(images).float()
        hits = topk_hits(logits, batch["labels"], ks)
        counts += torch.tensor([len(batch["labels"]), *(hits[k] for k in ks)], dtype=torch.float64, device=device)
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(counts)
    n = int(counts[0].item())
    if n == 0:
        raise ValueError("the val split has no samples to score")
    return {**{f"top{k}": 100.0 * counts[j + 1].item() / n for j, k in enumerate(ks)}, "samples": n}
