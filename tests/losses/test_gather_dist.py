"""Negatives gathered over 2 gloo processes give the single-process full-batch loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmim.losses.gather import all_gather_no_grad, all_gather_with_grad
from cmim.losses.infonce import info_nce, nt_xent

WORLD, N_LOCAL, DIM, TAU = 2, 3, 5, 0.2


def _data():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(WORLD * N_LOCAL, DIM, generator=g) for _ in range(2)]


def _loss(kind: str, a: torch.Tensor, b: torch.Tensor, gather: bool) -> torch.Tensor:
    if kind == "nt_xent":
        return nt_xent(a, b, TAU, gather=gather)
    return info_nce(a, b, TAU, gather=gather)


def _worker(rank: int, init: str, kind: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        a, b = (x[rank * N_LOCAL:(rank + 1) * N_LOCAL].clone().requires_grad_(True) for x in _data())
        loss = _loss(kind, a, b, gather=True)
        loss.backward()
        gathered = all_gather_no_grad(torch.tensor([float(rank)]))
        torch.save({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad, "ranks": gathered},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["nt_xent", "info_nce"])
def test_two_gloo_ranks_equal_one_process(kind, tmp_path):
    mp.spawn(_worker, args=(f"file://{tmp_path}/init", kind, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    a, b = (x.clone().requires_grad_(True) for x in _data())
    full = _loss(kind, a, b, gather=False)
    full.backward()
    # the mean of the ranks' losses is the full-batch loss
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), full.detach())
    for rank, r in enumerate(results):
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        assert r["ranks"].tolist() == [0.0, 1.0]
        # each rank's own rows get WORLD x the gradient of the mean loss (DDP's averaging undoes it)
        torch.testing.assert_close(r["grad_a"], WORLD * a.grad[rows])
        if kind == "nt_xent":
            torch.testing.assert_close(r["grad_b"], WORLD * b.grad[rows])
        else:
            assert r["grad_b"] is None or torch.all(r["grad_b"] == 0)   # keys: no gradient


def test_gathers_are_identity_without_distributed():
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_with_grad(x) is x
    assert torch.equal(all_gather_no_grad(x), x) and not all_gather_no_grad(x).requires_grad
