"""Pixel losses on patch sequences [N, L, P] with MAE's mask convention (1 = removed, 0 = kept)."""

from __future__ import annotations

from torch import Tensor


def norm_pix(target: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's norm_pix_loss target: each patch standardised, (t - mean) / sqrt(var + eps), with
    torch's unbiased variance over the patch's P values."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over the patches where mask == 1 of each patch's mean squared error (MAE's loss).

    Computed in float32. With no selected patch at all the loss is 0 (MAE would divide by 0).
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)   # [N, L]
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def visible_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The same on the *kept* patches (mask == 0): CAN's denoising loss against the added noise."""
    return masked_mse(pred, target, 1.0 - mask.float())
