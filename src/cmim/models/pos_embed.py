"""Fixed sinusoidal embeddings: MAE's 2-D sin-cos positions and a 1-D embedding of a scalar.

Why fixed: MAE, CAN and CMAE all freeze their position embeddings (sin-cos, requires_grad False)
in encoder and decoder; CAN embeds its per-image noise level sigma with a DDPM-style sinusoid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """MAE's 1-D table: positions [M] -> [M, dim], first half sin, second half cos.

    Frequencies omega_i = 1 / 10000^(i / (dim/2)), i = 0 .. dim/2 - 1.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega                                   # [dim/2]
    out = positions.to(torch.float64).reshape(-1, 1) * omega[None]  # [M, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = False) -> Tensor:
    """MAE's 2-D sin-cos positions of a grid_size x grid_size grid, raster order: [(1+) L, dim] float32.

    The first dim/2 channels encode the column (x) index and the last dim/2 the row (y) index, as in
    MAE (its meshgrid puts w first). With cls_token, row 0 is a zero vector (the cls position).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")   # [G, G] each, raster order
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.to(torch.float32)


def scalar_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """DDPM-style sinusoid of a scalar per sample: values [N] -> [N, dim] (float32).

    freq_i = exp(-ln(max_period) * i / (dim/2 - 1)), i = 0 .. dim/2 - 1; output [sin | cos] of
    values * freq, as the CAN authors' code embeds sigma. The value is not rescaled (their code
    feeds the raw sigma, at most 0.05-0.1), so over that range sin is nearly linear in sigma and
    cos nearly 1: the MLP on top has to amplify a small signal.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"scalar embedding needs an even dim >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32)
                      / (half - 1))
    args = values.to(torch.float32).reshape(-1, 1) * freqs[None]   # [N, half]
    return torch.cat([args.sin(), args.cos()], dim=1)
