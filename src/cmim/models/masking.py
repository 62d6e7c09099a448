"""Which patches the encoder sees: MAE's per-sample random masking and CMAE's block masking.

Both return the same triple, at patch level:
  ids_keep    [n, K] long: indices of kept patches (the encoder's input order)
  mask        [n, L] float: 1 = removed, 0 = kept (MAE's convention)
  ids_restore [n, L] long: gathering [kept..., removed...] with it gives raster order back
Randomness comes from torch's global generator on `device` (the trainer seeds it per step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmim.options.methods import kept_count


def num_kept(length: int, ratio: float) -> int:
    """MAE's count: int(L * (1 - ratio)) (truncation, not rounding); the same count the config's
    check of a run's reachable mask ratio uses (cmim.options.methods.kept_count)."""
    return kept_count(length, ratio)


def _from_shuffle(ids_shuffle: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """ids_shuffle [n, L] (kept first) -> (ids_keep, mask, ids_restore)."""
    n, length = ids_shuffle.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length, device=ids_shuffle.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)                     # back to raster order
    return ids_shuffle[:, :keep], mask, ids_restore


def random_masking(n: int, length: int, ratio: float, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """MAE: per-sample argsort of uniform noise; the K = int(L(1-ratio)) smallest are kept."""
    keep = num_kept(length, ratio)
    noise = torch.rand(n, length, device=device)
    return _from_shuffle(torch.argsort(noise, dim=1), keep)


def block_masking(n: int, grid: int, block: int, ratio: float, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """CMAE: mask in block x block patch units on a grid x grid patch grid.

    int(num_blocks * (1 - ratio)) blocks are kept per sample (at 14x14, block 2, ratio 0.65:
    17 of 49 blocks = 68 patches, an effective ratio of 65.3%). Kept patches are listed in raster
    order (the encoder is permutation-equivariant once positions are added, so the order is a
    convention); removed patches follow in raster order in ids_restore's reference.
    """
    if grid % block:
        raise ValueError(f"block size {block} does not divide the {grid}x{grid} patch grid")
    blocks_side = grid // block
    keep_blocks = num_kept(blocks_side**2, ratio)
    noise = torch.rand(n, blocks_side**2, device=device)
    block_mask = torch.ones(n, blocks_side**2, device=device)
    block_mask.scatter_(1, torch.argsort(noise, dim=1)[:, :keep_blocks], 0.0)
    patch_mask = (block_mask.view(n, blocks_side, 1, blocks_side, 1)
                  .expand(n, blocks_side, block, blocks_side, block).reshape(n, grid * grid))
    ids_shuffle = torch.argsort(patch_mask, dim=1, stable=True)   # kept (0) first, raster order
    return _from_shuffle(ids_shuffle, keep_blocks * block * block)
