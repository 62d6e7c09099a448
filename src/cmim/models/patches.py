"""Images <-> patch sequences in MAE's order.

Why MAE's (h, w, p, q, c) order: reconstruction targets, norm-pix statistics and CAN's patch-space
noise must line up with MAE's released decoders, which predict p*p*3 values per patch in this order.
"""

from __future__ import annotations

from torch import Tensor


def patchify(imgs: Tensor, p: int) -> Tensor:
    """imgs [N, C, H, W] -> [N, L, p*p*C], L = (H/p)(W/p) raster order, values ordered (row p, col q, channel c)."""
    n, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible into {p}x{p} patches")
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)                # n h w p q c
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(x: Tensor, p: int, channels: int = 3, grid: tuple[int, int] | None = None) -> Tensor:
    """[N, L, p*p*C] -> images [N, C, H, W]; the inverse of patchify (square grid unless given)."""
    n, length, _ = x.shape
    if grid is None:
        side = round(length**0.5)
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    gh, gw = grid
    x = x.reshape(n, gh, gw, p, p, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)                # n c h p w q
    return x.reshape(n, channels, gh * p, gw * p)
