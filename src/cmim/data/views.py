"""What the loader workers hand a method: per image, V uint8 crops of one size.

Why here: workers only decode and crop (cheap, CPU); flips, colour, blur, normalisation and CAN's
noise run on the batch on the accelerator (DESIGN section 6). A method states the crops it needs
with a ViewSpec; the loader returns `images` as uint8 [B, V, 3, S, S] and `labels` as int64 [B].
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewSpec:
    num_views: int                       # independent RandomResizedCrops per image (CAN/SimCLR: 2)
    crop_size: int                       # output side S in pixels
    scale: tuple[float, float] = (0.2, 1.0)          # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)      # RandomResizedCrop aspect range
    interpolation: str = "bicubic"       # MAE: bicubic; CAN's SimCLR views: bilinear
    center_crop_pct: float | None = None  # set: deterministic eval view (resize short side to
                                          # crop_size / pct, centre-crop), no randomness


def eval_view(size: int, crop_pct: float = 0.875) -> ViewSpec:
    """Evaluation view: resize the short side to size/crop_pct then centre-crop (MAE's 256 -> 224)."""
    return ViewSpec(num_views=1, crop_size=size, center_crop_pct=crop_pct)
