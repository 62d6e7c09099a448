"""The EMA target network and its momentum schedule (CMAE; BYOL/MoCo style), in one place."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, over parameters (same order, same shapes).

    Buffers (BatchNorm running statistics) are not averaged: the target keeps its own, as the
    momentum update in CMAE's code touches parameters only.
    """
    t_params = list(target.parameters())
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError(f"EMA target has {len(t_params)} parameters, online {len(o_params)}")
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - m)


def momentum_at(progress: float, start: float, end: float) -> float:
    """Cosine schedule from start (progress 0) to end (progress 1):
    m = end - (end - start) * (cos(pi * progress) + 1) / 2. start == end gives a constant."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
