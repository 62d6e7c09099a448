"""Weighted k-nearest-neighbour classification of frozen features, as DINO (Caron et al. 2021).

Features are L2-normalised, so the dot product is the cosine similarity; each val image's k most
similar train images vote for their class with weight exp(similarity / temperature); the class
with the largest total wins; top-5 ranks the classes by their totals.
No training, so the score is a direct read of the representation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmim.evals.classify import accuracy


@torch.no_grad()
def knn_votes(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, *, k: int = 20,
              temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores [N_test, C]: per test row, sum over its k nearest train rows of exp(sim / T)."""
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
        out.append(votes)
    return torch.cat(out)


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, k: int = 20,
                 temperature: float = 0.07) -> dict[str, float]:
    votes = knn_votes(train_x, train_y, test_x, num_classes, k=k, temperature=temperature)
    return accuracy(votes, test_y)
