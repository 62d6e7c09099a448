"""Methods on 2 gloo ranks: gathered negatives give the full-batch loss; DDP trains CMAE's
online branch while the EMA target stays out of the gradient sync and equal on every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from method_runs import make_run
from torch.nn.parallel import DistributedDataParallel

from cmim.methods import build_method

WORLD, N_LOCAL = 2, 4
NO_AUG = {"hflip_prob": 0.0, "color_jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0}


def _images(view_spec) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s = view_spec.crop_size
    return torch.randint(0, 256, (WORLD * N_LOCAL, view_spec.num_views, 3, s, s), dtype=torch.uint8, generator=g)


def _simclr():
    torch.manual_seed(0)
    return build_method(make_run("simclr", augment=NO_AUG))


def _worker(rank: int, init: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        model = _simclr()
        images = _images(model.view_spec())[rank * N_LOCAL:(rank + 1) * N_LOCAL]
        loss = model({"images": images, "labels": torch.zeros(N_LOCAL, dtype=torch.int64)})["total"]

        torch.manual_seed(0)
        cmae = build_method(make_run("cmae"))
        ddp = DistributedDataParallel(cmae)
        opt = torch.optim.AdamW(cmae.parameter_groups(0.05), lr=1e-3)
        cmae_images = _images(cmae.view_spec())[rank * N_LOCAL:(rank + 1) * N_LOCAL]
        for step in range(2):
            torch.manual_seed(100 * step + rank)                      # different masks/views per rank
            terms = ddp({"images": cmae_images, "labels": torch.zeros(N_LOCAL, dtype=torch.int64)})
            opt.zero_grad()
            terms["total"].backward()
            opt.step()
            cmae.after_step((step + 1) / 2)
        torch.save({"loss": loss.detach(), "target": cmae.target_encoder.state_dict(),
                    "online": cmae.encoder.state_dict()}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks(tmp_path):
    mp.spawn(_worker, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    model = _simclr()
    full = model({"images": _images(model.view_spec()), "labels": torch.zeros(WORLD * N_LOCAL, dtype=torch.int64)})
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), full["total"].detach())
    for key in ("target", "online"):                                  # DDP keeps the ranks in step
        for name, value in results[0][key].items():
            torch.testing.assert_close(results[1][key][name], value)
