"""Weighted k-nearest-neighbour classification of frozen features, as DINO (Caron et al. 2021).

Features are L2-normalised, so the dot product is the cosine similarity; each val image's k most
similar train images vote for their class with weight exp(similarity / temperature); the class
with the largest total wins; top-5 ranks the classes by their totals.
No training, so the score is a direct read of the representation.

A class that none of the k neighbours belongs to got no vote and is never a hit, at any k: top-5
counts a val image as a hit only if its class is among the (at most 5) classes its neighbours voted
for. Why: with 20 neighbours most images see fewer than 5 classes, and which zero-vote classes
would fill the rest of a top 5 is `torch.topk`'s tie order, not the representation (DINO's own
`knn_classifier` ranks the zero totals too; in the demo it added 0.8 points to MAE's top-5: 95.5
under the old rule, 94.7 now, 2 000 val images, 71% of them with fewer than 5 voted classes).
Such classes score -inf in `knn_votes(..., no_vote=-inf)`, and cmim.evals.classify never counts a
-inf score as a hit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmim.evals.classify import accuracy


@torch.no_grad()
def knn_votes(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, *, k: int = 20,
              temperature: float = 0.07, chunk: int = 1024, no_vote: float = 0.0) -> torch.Tensor:
    """Class scores [N_test, C]: per test row, sum over its k nearest train rows of exp(sim / T);
    `no_vote` for a class none of them belongs to (0, or -inf: never a hit, see the module docstring)."""
    if len(train_x) == 0:
        raise ValueError("kNN needs at least one train feature")
    k = min(k, len(train_x))
    train = F.normalize(train_x.float(), dim=1)
    out = []
    for rows in F.normalize(test_x.float(), dim=1).split(chunk):
        sims, idx = (rows @ train.T).topk(k, dim=1)                 # [n, k]
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(rows), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[idx], weights)
        voted = torch.zeros_like(votes, dtype=torch.bool).scatter_(1, train_y[idx], True)   # [n, C]
        out.append(votes.masked_fill_(~voted, no_vote))
    return torch.cat(out)


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, k: int = 20,
                 temperature: float = 0.07) -> dict[str, float]:
    """Top-1 / top-5 (k <= classes) of the weighted vote; a class without a vote is never a hit."""
    votes = knn_votes(train_x, train_y, test_x, num_classes, k=k, temperature=temperature, no_vote=float("-inf"))
    return accuracy(votes, test_y)
