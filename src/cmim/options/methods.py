"""A pretraining run's option blocks: runs.<id>.augment and runs.<id>.<method>, with their rules.

Each class mirrors its schema block (`$defs.<name>`: same keys, order and defaults). A rule that
needs only the block lives in `__post_init__`; a rule that needs the run's patch grid in
`grid_problems(grid)`. cmim.config calls both while validating a study, and the methods meet the
same `__post_init__` when they build their options, so each rule is written once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentOptions:
    """runs.<id>.augment; defaults are SimCLR's (and CAN's)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area range (applied by the loader)
    hflip_prob: float = 0.5                         # horizontal flip probability per view
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast,
                                                    # saturation, hue strengths (0 = op skipped)
    color_jitter_prob: float = 0.8                  # SimCLR's RandomApply(ColorJitter, p=0.8)
    grayscale_prob: float = 0.2                     # SimCLR's RandomGrayscale(p=0.2)
    blur_prob: float = 0.5                          # CAN's / SimCLR (ImageNet) blur probability
    blur_sigma: tuple[float, float] = (0.1, 2.0)    # sigma range in pixels at 224 px, scaled by H/224

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augment.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        for name in ("hflip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        if min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            raise ValueError("augment.color_jitter strengths must be >= 0 with hue <= 0.5, "
                             f"got {self.color_jitter}")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"augment.blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")


MASK_RATIO_TOLERANCE = 0.05   # a run must be able to mask within this of its mask_ratio on its grid


def kept_count(units: int, ratio: float) -> int:
    """MAE's count of kept patches (or blocks): int(units x (1 - ratio)), truncated, not rounded."""
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(units * (1 - ratio))


def effective_ratio(units: int, ratio: float) -> float:
    """The share a ratio really masks when `units` patches (or blocks) are kept or removed whole."""
    return 1 - kept_count(units, ratio) / units


def _mask_problems(mask_ratio: float, grid: int, block: int = 1) -> list[tuple[str, str]]:
    """No visible patch left, or a ratio the grid cannot come within MASK_RATIO_TOLERANCE of."""
    units = (grid // block) ** 2
    if kept_count(units, mask_ratio) < 1:
        return [("mask_ratio", f"{mask_ratio} leaves no visible patch on a {grid}x{grid} grid")]
    found = effective_ratio(units, mask_ratio)
    if abs(found - mask_ratio) <= MASK_RATIO_TOLERANCE:
        return []
    reachable = sorted({round(1 - k / units, 4) for k in range(1, units + 1)})
    near = sorted(reachable, key=lambda r: abs(r - mask_ratio))[:2]
    what = f"the {grid}x{grid} patch grid" + (f" in {block}x{block}-patch blocks ({units} blocks)" if block > 1 else "")
    return [("mask_ratio", f"{mask_ratio} masks {found:.1%} on {what}, more than {MASK_RATIO_TOLERANCE} away; the "
                           f"nearest ratios it can mask are {' and '.join(f'{r:.1%}' for r in sorted(near))}: "
                           f"choose one of them, or another patch_size" + (" / block_size" if block > 1 else ""))]


@dataclass(frozen=True)
class MAEOptions:
    """runs.<id>.mae."""

    decoder_dim: int = 512        # decoder width (MAE's dec512d8b)
    decoder_depth: int = 8        # decoder blocks; the linear probe is sensitive to it (MultiMAE#1)
    decoder_heads: int = 16       # decoder attention heads
    mask_ratio: float = 0.75      # fraction of patches removed, uniform per sample
    norm_pix_loss: bool = True    # per-patch standardised target, as the released models

    def grid_problems(self, grid: int) -> list[tuple[str, str]]:
        """(key, problem) of these options on a grid x grid patch grid."""
        return _mask_problems(self.mask_ratio, grid)

    def effective_mask_ratio(self, grid: int) -> float:
        """The share of patches really masked on a grid x grid patch grid."""
        return effective_ratio(grid * grid, self.mask_ratio)


@dataclass(frozen=True)
class CANOptions:
    """runs.<id>.can."""

    decoder_dim: int = 512            # decoder width (MAE's dec512d8b)
    decoder_depth: int = 8            # decoder blocks
    decoder_heads: int = 16           # decoder heads
    mask_ratio: float = 0.5           # masked fraction in *each* view (paper; authors' CLI default 0.75)
    noise: bool = True                # Gaussian noise on the visible patches
    sigma_max: float = 0.05           # sigma ~ U[0, sigma_max] per view sample, normalised units (code: 0.1)
    denoise_loss: bool = True         # predict the noise on visible patches (false: noise as augmentation)
    sigma_embed: str = "all"          # sigma embedding on all decoder tokens, cls+visible only, or "off"
    denoise_weight: float = 0.3       # w in (1 - w) recon + w denoise
    mae_weight: float = 0.97          # weight of the reconstruction(+denoising) part
    contrastive_weight: float = 0.03  # weight of NT-Xent
    temperature: float = 0.1          # NT-Xent temperature
    norm_pix_loss: bool = False       # standardise the reconstruction target per patch
    clean_target: bool = True         # reconstruct the clean image (false: the noisy one, as the code)
    pool: str = "mean_patch"          # contrastive feature: mean of patch tokens, or of all incl. cls
    projector: str = "mlp2"           # mlp2 (authors' code, no BN) or mlp3_bn (4096 hidden, BN)
    proj_dim: int = 128               # projector output size
    gather_negatives: bool = True     # negatives from all ranks (all-gather with gradient)

    def __post_init__(self) -> None:
        if self.sigma_embed not in ("all", "visible", "off"):
            raise ValueError(f"sigma_embed must be all, visible or off, got {self.sigma_embed!r}")
        if not self.noise and (self.denoise_loss or self.sigma_embed != "off"):
            raise ValueError("noise is off, so denoise_loss must be false and sigma_embed 'off' "
                             "(nothing to denoise or embed)")

    def grid_problems(self, grid: int) -> list[tuple[str, str]]:
        return _mask_problems(self.mask_ratio, grid)

    def effective_mask_ratio(self, grid: int) -> float:
        return effective_ratio(grid * grid, self.mask_ratio)


@dataclass(frozen=True)
class CMAEOptions:
    """runs.<id>.cmae."""

    decoder_dim: int = 512              # pixel and feature decoder width
    decoder_depth: int = 8              # pixel decoder blocks
    decoder_heads: int = 16             # heads of both decoders
    mask_ratio: float = 0.65            # masked fraction (blocks kept: int(num_blocks * 0.35))
    mask_type: str = "block"            # block (released code) or random (MAE's uniform masking)
    block_size: int = 2                 # block side in patches for block masking
    pixel_shift: float | None = None    # max target shift in px; None = 31/224 of the view side
    feature_decoder: bool = True        # online feature from the feature decoder (else encoder tokens)
    feature_decoder_depth: int = 2      # feature decoder blocks (width decoder_dim, out = encoder width)
    momentum: float = 0.996             # EMA momentum at the start
    momentum_end: float = 0.996         # EMA momentum at the end (cosine; equal = constant)
    temperature: float = 0.07           # InfoNCE temperature
    contrastive_weight: float = 1.0     # weight of the (2 tau-scaled) InfoNCE
    recon_weight: float = 1.0           # weight of the pixel reconstruction
    norm_pix_loss: bool = True          # per-patch standardised target (always on in the released code)
    proj_hidden: int | None = None      # projector/predictor hidden size; None = 2 x encoder width
    proj_dim: int = 256                 # projector output size
    target_color_aug: bool = True       # colour jitter, grayscale and blur on the target view
    gather_negatives: bool = True       # keys from all ranks (no gradient)

    def __post_init__(self) -> None:
        if self.mask_type not in ("block", "random"):
            raise ValueError(f"mask_type must be block or random, got {self.mask_type!r}")
        if self.momentum_end < self.momentum:
            raise ValueError(f"momentum_end {self.momentum_end} must be >= momentum ({self.momentum})")

    def grid_problems(self, grid: int) -> list[tuple[str, str]]:
        if self.mask_type == "block" and grid % self.block_size:
            return [("block_size", f"{self.block_size} does not divide the {grid}x{grid} patch grid; use "
                                   f"mask_type: random or another block_size")]
        return _mask_problems(self.mask_ratio, grid, self.block_size if self.mask_type == "block" else 1)

    def effective_mask_ratio(self, grid: int) -> float:
        block = self.block_size if self.mask_type == "block" else 1
        return effective_ratio((grid // block) ** 2, self.mask_ratio)


@dataclass(frozen=True)
class SimCLROptions:
    """runs.<id>.simclr."""

    temperature: float = 0.1          # NT-Xent temperature (CAN's; SimCLR's own value not found)
    pool: str = "mean_patch"          # contrastive feature: mean of patch tokens, or all tokens incl. cls
    projector: str = "mlp2"           # CAN's head (mlp2) or the 3-layer BN head (mlp3_bn)
    proj_dim: int = 128               # projector output size
    gather_negatives: bool = True     # negatives from all ranks (all-gather with gradient)

    def grid_problems(self, grid: int) -> list[tuple[str, str]]:
        return []

    def effective_mask_ratio(self, grid: int) -> float:
        return 0.0   # two full views, nothing masked


METHOD_OPTIONS = {"mae": MAEOptions, "can": CANOptions, "cmae": CMAEOptions, "simclr": SimCLROptions}
