"""Contrastive losses: one-direction InfoNCE (CMAE) and symmetric NT-Xent (CAN, SimCLR).

Inputs are L2-normalised here and the logits computed in float32 (safe under bf16 autocast).
With gather=True the candidates come from every rank; this rank's positives then sit on the
diagonal shifted by rank * n. Each returns the mean over this rank's anchors; the mean of the
ranks' losses equals the single-process loss over the full batch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from cmim.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world


def info_nce(q: Tensor, k: Tensor, temperature: float, gather: bool = False) -> Tensor:
    """CE(q k^T / t) with q_i's positive k_i: q [n, d] queries, k [n, d] keys.

    gather: keys of all ranks are the candidates, gathered without gradient (CMAE's keys come
    from the EMA target). One direction only (queries -> keys).
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    offset = 0
    if gather:
        rank, _ = rank_and_world()
        k, offset = all_gather_no_grad(k), rank * q.shape[0]
    logits = q @ k.T / temperature                                  # [n, world * n]
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, gather: bool = False) -> Tensor:
    """SimCLR's NT-Xent (= SupCon without labels): z1, z2 [n, d] two views of the same n images.

    Every one of the 2n local views is an anchor; its candidates are all 2N views (N = world * n)
    except itself: 1 positive (the other view of its image) and 2N - 2 negatives. gather: the
    candidates of all ranks, gathered with gradient.
    """
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    rank = 0
    c1, c2 = z1, z2
    if gather:
        rank, _ = rank_and_world()
        c1, c2 = all_gather_with_grad(z1), all_gather_with_grad(z2)
    big_n = c1.shape[0]
    anchors = torch.cat([z1, z2])                                   # [2n, d]
    logits = anchors @ torch.cat([c1, c2]).T / temperature          # [2n, 2N]
    idx = torch.arange(n, device=z1.device) + rank * n
    self_idx = torch.cat([idx, idx + big_n])
    pos_idx = torch.cat([idx + big_n, idx])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=z1.device), self_idx] = True
    return F.cross_entropy(logits.masked_fill(is_self, float("-inf")), pos_idx)
