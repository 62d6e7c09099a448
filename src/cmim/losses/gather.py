"""All-gather across ranks: with gradient (CAN/SimCLR negatives) and without (CMAE keys).

Both are the identity when torch.distributed is not initialised or has one rank. Every rank must
pass a tensor of the same shape (equal per-rank batches, as the trainer's loader gives).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(x: Tensor, world: int) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's x along dim 0. Backward: sum the incoming gradients of
    all ranks (all-reduce) and return this rank's slice, i.e. a reduce-scatter written with an
    all-reduce, which every backend (gloo included) supports."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        rank, world = rank_and_world()
        ctx.rank, ctx.n = rank, x.shape[0]
        return _gather(x, world)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """[n, ...] -> [world * n, ...], rank order; gradients flow back to every rank's own rows.

    With every rank's loss computed on the gathered tensor, this rank's rows receive the sum over
    ranks of d loss_r / d x, i.e. world_size x the gradient of the mean of the ranks' losses;
    DDP's gradient averaging divides it back.
    """
    _, world = rank_and_world()
    return x if world == 1 else _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: Tensor) -> Tensor:
    """[n, ...] -> [world * n, ...], rank order, detached (keys from a no-grad target branch)."""
    _, world = rank_and_world()
    return x.detach() if world == 1 else _gather(x.detach(), world)
