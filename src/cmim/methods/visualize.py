"""Reconstructions of the MAE-family decoders (MAE, CAN, CMAE) for the report's figure.

Why here: a prediction of norm-pix targets is per-patch standardised, so drawn as is it looks
broken (mae#12, #156); each predicted patch is mapped back with its target patch's own mean and
std, pasted over the masked patches, and the whole image un-normalised with the dataset's mean/std.
Output: uint8 images [N, 3, S, S]: the input, the masked input (removed patches grey), and the
reconstruction (visible patches as given, masked ones predicted).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmim.models.patches import patchify, unpatchify


def unnormalise(x: Tensor, mean, std) -> Tensor:
    """Normalised float [N, 3, S, S] -> uint8 in [0, 255]."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x * s + m).clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def compose(imgs: Tensor, pred: Tensor, mask: Tensor, patch: int, norm_pix: bool, mean, std) -> dict[str, Tensor]:
    """imgs [N, 3, S, S] normalised, pred [N, L, P] (norm-pix units if norm_pix), mask [N, L] (1 = removed)."""
    target = patchify(imgs, patch)                                    # [N, L, P]
    if norm_pix:
        mu, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6).sqrt() + mu
    m = mask.unsqueeze(-1).to(target.dtype)
    grey = torch.zeros_like(target)                                   # normalised 0 = the dataset's mean colour
    masked = unpatchify(target * (1 - m) + grey * m, patch)
    recon = unpatchify(target * (1 - m) + pred.float() * m, patch)
    return {"input": unnormalise(imgs, mean, std), "masked": unnormalise(masked, mean, std),
            "reconstruction": unnormalise(recon, mean, std)}
