"""Tiny resolved runs and batches for the method tests (32 px, patch 4, 2 blocks of width 64)."""

from __future__ import annotations

import torch

from cmim.config import validate
from cmim.study import resolve_run

FMNIST_MEAN, FMNIST_STD = [0.286] * 3, [0.353] * 3
TINY_DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def make_run(method: str, augment: dict | None = None, **options) -> dict:
    """A run resolved by cmim.config (so defaults come from the schema), method options overridden."""
    opts = {**(TINY_DECODER if method != "simclr" else {}), **options}
    cfg = {
        "datasets": {"fm": {"format": "fashion-mnist", "image_size": 32, "mean": FMNIST_MEAN, "std": FMNIST_STD}},
        "runs": {"r": {"method": method, "dataset": "fm", "arch": "vit_tiny", "patch_size": 4, "depth": 2,
                       "embed_dim": 64, "num_heads": 2, "epochs": 1, "warmup_epochs": 0, method: opts,
                       "augment": augment or {}}},
    }
    return resolve_run(validate(cfg), "r")


def random_batch(view_spec, batch: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = view_spec.crop_size
    images = torch.randint(0, 256, (batch, view_spec.num_views, 3, s, s), dtype=torch.uint8, generator=g)
    return {"images": images, "labels": torch.zeros(batch, dtype=torch.int64)}
