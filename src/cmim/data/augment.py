"""Batched view augmentations on the device the batch is on: flip, SimCLR colour jitter, grayscale, blur.

Why here and not in the loader: loader workers only decode and crop to uint8; SimCLR-style colour
and blur on CPU deliver 186-769 img/s where one H100 consumes ~1800 (DESIGN section 6,
notes/gpu-anchors.md). So every op below works on a whole float batch [B, 3, H, W] in [0, 1],
with no Python loop over samples, and gives each sample its own random parameters.

Randomness: every parameter is drawn with `torch.rand(..., device=x.device)`, i.e. from torch's
global generator of the batch's device, so seeding torch per step makes the augmentations
reproducible. Each random op is split into `_<op>_params` (draws) and `_<op>` (applies explicit
per-sample parameters); the tests compare the second against torchvision's single-image ops.
An op whose probability is 0 draws nothing and returns its input unchanged (the same object).

Semantics follow torchvision's functional ops (`transforms.v2.functional`) per sample; see the
individual docstrings for the two deliberate differences (blur kernel size, reflect-pad limit).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from cmim.options.methods import AugmentOptions

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
BLUR_TRUNCATE = 3.0                    # blur kernel half-width in sigmas (2*ceil(3*sigma)+1 taps)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # op ids in colour-jitter orders and factors


# ----------------------------------------------------------------------------- conversion


def to_unit(images: Tensor) -> Tensor:
    """uint8 [..., 3, H, W] -> float32 in [0, 1] (x / 255, as ToTensor)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_unit expects uint8 images, got {images.dtype} (already converted?)")
    return images.to(torch.float32).div_(255.0)


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small read-only constant on `device`, built once. Built from a Python list on every call it
    would be copied from pageable host memory, and that copy synchronises a CUDA stream with the
    host: the CPU could no longer queue the next kernels while the GPU works. Made outside inference
    mode, so a constant first built by an evaluation can serve training too."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel (x - mean) / std over dim -3 of [..., 3, H, W]; same arithmetic as torchvision's."""
    mean_t = _constant(tuple(float(m) for m in mean), x.dtype, x.device).view(-1, 1, 1)
    std_t = _constant(tuple(float(v) for v in std), x.dtype, x.device).view(-1, 1, 1)
    if mean_t.numel() != x.shape[-3] or std_t.numel() != x.shape[-3]:
        raise ValueError(f"mean/std need {x.shape[-3]} values, got {len(mean)} and {len(std)}")
    return (x - mean_t) / std_t


def _check(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected float images [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1] in x's dtype, for broadcasting over a batch of images."""
    return v.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def _coin(batch: int, p: float, device) -> Tensor:
    """bool [B]: True with probability p (p=0 never, p=1 always, since rand is in [0, 1))."""
    return torch.rand(batch, device=device) < p


def _uniform(shape, lo: float, hi: float, device) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, device=device)


# ----------------------------------------------------------------------------- flip


def hflip_flags(batch: int, p: float, device) -> Tensor:
    """bool [B]: which samples to flip. Draw once and pass to apply_hflip to flip two views alike."""
    return _coin(batch, p, device)


def apply_hflip(x: Tensor, flags: Tensor) -> Tensor:
    """Flip (last dim) the samples whose flag is True; x is [B, ...] of any dtype."""
    return torch.where(flags.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def random_hflip(x: Tensor, p: float) -> Tensor:
    if p == 0:
        return x
    return apply_hflip(x, hflip_flags(x.shape[0], p, x.device))


# ----------------------------------------------------------------------------- colour


def _gray(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> luma [B, 1, H, W], torchvision's weights and summation order."""
    r, g, b = x.unbind(dim=1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(x: Tensor, target: Tensor, factors: Tensor) -> Tensor:
    """clamp(f * x + (1 - f) * target, 0, 1) per sample: torchvision's _blend."""
    f = _per_sample(factors, x)
    return (x * f).add_(target * (1 - f)).clamp_(0, 1)   # in place on fresh tensors only


def _adjust_brightness(x: Tensor, factors: Tensor) -> Tensor:
    return (x * _per_sample(factors, x)).clamp_(0, 1)


def _adjust_contrast(x: Tensor, factors: Tensor) -> Tensor:
    """Blend with the mean of each sample's grayscale image."""
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factors)


def _adjust_saturation(x: Tensor, factors: Tensor) -> Tensor:
    return _blend(x, _gray(x), factors)


def _adjust_hue(x: Tensor, shifts: Tensor) -> Tensor:
    """Rotate hue by shifts [B] (fraction of a turn, in [-0.5, 0.5]) keeping HSV saturation and value.

    Same HSV model as torchvision's adjust_hue (hue from the max channel, r before g before b on
    ties); back to RGB with the closed form c_n = v - (v - min) * clamp(min(k, 4 - k), 0, 1),
    k = (n + 6 h) mod 6, n = 5, 3, 1 for r, g, b, which equals torchvision's six-sector table.
    """
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)            # [B, H, W]; = aminmax over dim 1, which is
    minc = torch.minimum(torch.minimum(r, g), b)            # a slow strided reduction on CPU
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, 1.0)             # grey pixels: hue is moot
    h6 = torch.where(maxc == r, (g - b) / safe,
                     torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))  # hue * 6
    h6.add_(6 * _per_sample(shifts, x).squeeze(1))
    n = _constant((5.0, 3.0, 1.0), x.dtype, x.device).view(1, 3, 1, 1)
    k = (n + h6.unsqueeze(1)).remainder_(6)                 # [B, 3, H, W]
    weight = torch.minimum(k, 4 - k).clamp_(0, 1)
    return weight.mul_(-chroma.unsqueeze(1)).add_(maxc.unsqueeze(1))  # max - chroma * weight


def _jitter_step(x: Tensor, ops: Tensor, factors: Tensor, active: Tensor) -> Tensor:
    """One brightness/contrast/saturation step where each sample applies its own op ids [B].

    Samples that sit this step out blend with factor 1: x * 1 + target * 0 is x exactly, and the
    clamp leaves x alone (in [0, 1]), so no select of the whole batch is needed.
    """
    gray = _gray(x)                                          # [B, 1, H, W]
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    op = ops.view(-1, 1, 1, 1)
    target = torch.where(op == SATURATION, gray, torch.where(op == CONTRAST, mean, 0.0))   # brightness: 0
    return _blend(x, target, torch.where(active, factors, 1.0))


def _color_jitter(x: Tensor, factors: Tensor, order: Tensor, active: Tensor,
                  enabled: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> Tensor:
    """Jitter with explicit parameters, each sample applying the four ops in its own order.

    factors [B, 4]: brightness, contrast, saturation factors and the hue shift; order long [B, 4]:
    a permutation of op ids (BRIGHTNESS, CONTRAST, SATURATION, HUE) per sample; active bool [B]:
    samples to jitter (the others come back unchanged); enabled: ops to run at all (torchvision
    skips an op whose strength is 0). Without a Python loop over samples: the three blend ops
    run in 3 steps before the hue step and 3 after, each sample taking part in the steps its
    order puts on its side of hue, so hue (the costly op) runs once.
    """
    _check(x)
    position = order.argsort(dim=1)                          # [B, 4] where each op comes
    blend_order = position[:, :HUE].argsort(dim=1)           # [B, 3] b/c/s ops in the sample's order
    hue_at = position[:, HUE]                                # how many blend ops come before hue
    blend_enabled = _constant(tuple(bool(e) for e in enabled[:HUE]), torch.bool, x.device)
    for before_hue in (True, False):
        if any(enabled[:HUE]):
            for j in range(3):
                ops = blend_order[:, j]
                side = j < hue_at if before_hue else j >= hue_at
                step_factors = factors.gather(1, ops[:, None]).squeeze(1)
                x = _jitter_step(x, ops, step_factors, active & side & blend_enabled[ops])
        if before_hue and enabled[HUE]:
            x = torch.where(active.view(-1, 1, 1, 1), _adjust_hue(x, factors[:, HUE]), x)
    return x


def _jitter_params(batch: int, brightness: float, contrast: float, saturation: float, hue: float,
                   p: float, device) -> tuple[Tensor, Tensor, Tensor]:
    """Draw (factors [B, 4], order [B, 4], active [B]) as torchvision's ColorJitter, per sample."""
    if not 0 <= hue <= 0.5 or min(brightness, contrast, saturation) < 0:
        raise ValueError(f"jitter strengths must be >= 0 and hue <= 0.5, got "
                         f"{(brightness, contrast, saturation, hue)}")
    active = _coin(batch, p, device)
    u = torch.rand(batch, 4, device=device)
    device = torch.device(device)
    lo = _constant(tuple(max(0.0, 1 - s) for s in (brightness, contrast, saturation)) + (-hue,), torch.float32, device)
    hi = _constant(tuple(1 + s for s in (brightness, contrast, saturation)) + (hue,), torch.float32, device)
    factors = lo + (hi - lo) * u
    order = torch.rand(batch, 4, device=device).argsort(dim=1)  # a uniform random permutation each
    return factors, order, active


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float) -> Tensor:
    """torchvision's ColorJitter(brightness, contrast, saturation, hue) applied to each sample with
    probability p: factors ~ U[max(0, 1 - s), 1 + s], hue shift ~ U[-hue, hue], ops in a random
    order per sample, clamped to [0, 1] after each op. A strength of 0 skips that op."""
    _check(x)
    if p == 0:
        return x
    factors, order, active = _jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, x.device)
    enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    return _color_jitter(x, factors, order, active, enabled)


def _grayscale(x: Tensor, flags: Tensor) -> Tensor:
    """Replace the flagged samples by their luma replicated to 3 channels."""
    return torch.where(flags.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def random_grayscale(x: Tensor, p: float) -> Tensor:
    _check(x)
    if p == 0:
        return x
    return _grayscale(x, _coin(x.shape[0], p, x.device))


# ----------------------------------------------------------------------------- blur


def _blur_kernel_size(sigma_max: float, height: int, width: int) -> int:
    """Odd size 2 * ceil(3 sigma) + 1, capped so reflect padding fits the image (pad < side)."""
    half = min(math.ceil(BLUR_TRUNCATE * sigma_max), height - 1, width - 1)
    return 2 * max(half, 0) + 1


def _gaussian_blur(x: Tensor, sigmas: Tensor, kernel_size: int, flags: Tensor | None = None) -> Tensor:
    """Blur sample i with a separable Gaussian of sigmas[i] pixels, kernel_size taps, reflect padding.

    The whole batch goes through one depthwise conv per axis on [1, B*3, H, W] with B*3 kernels;
    flags [B] (default all) picks the samples that get the blurred result. The result is clamped
    to [0, 1]: the kernel sums to 1, but the float sum can exceed the brightest input by rounding.
    """
    _check(x)
    bsz, chans, height, width = x.shape
    half = kernel_size // 2
    taps = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    kernel = torch.softmax(-(taps**2) / (2 * _per_sample(sigmas, x).view(-1, 1) ** 2), dim=1)  # [B, K]
    kernel = kernel.repeat_interleave(chans, dim=0)          # [B*3, K]
    out = F.pad(x.reshape(1, bsz * chans, height, width), (half, half, half, half), mode="reflect")
    out = F.conv2d(out, kernel.view(-1, 1, kernel_size, 1), groups=bsz * chans)   # along H
    out = F.conv2d(out, kernel.view(-1, 1, 1, kernel_size), groups=bsz * chans)   # along W
    out = out.view(bsz, chans, height, width).clamp_(0, 1)   # a convex sum may round 1-2 ulp past 1
    return out if flags is None else torch.where(flags.view(-1, 1, 1, 1), out, x)


def gaussian_blur(x: Tensor, sigma_range: tuple[float, float], p: float, ref_size: int = 224) -> Tensor:
    """Blur each sample with probability p, sigma ~ U[sigma_range] * H / ref_size pixels.

    Unlike torchvision's GaussianBlur(kernel_size, sigma), the kernel size is not a setting: it is
    2 * ceil(3 * sigma_max) + 1 for the largest sigma the range allows (the same for every batch,
    no device sync), so each sample's result depends only on its own sigma. At 224 px and
    sigma <= 2 that is 13 taps, where SimCLR used 23; the Gaussian beyond 3 sigma (0.3% of the
    mass, renormalised away) is the only difference. The half-width is capped at side - 1, which
    reflect padding needs (torchvision raises instead).
    """
    _check(x)
    if p == 0:
        return x
    scale = x.shape[-2] / ref_size
    flags = _coin(x.shape[0], p, x.device)
    sigmas = _uniform(x.shape[0], sigma_range[0] * scale, sigma_range[1] * scale, x.device)
    kernel_size = _blur_kernel_size(sigma_range[1] * scale, x.shape[-2], x.shape[-1])
    return _gaussian_blur(x, sigmas, kernel_size, flags)


# ----------------------------------------------------------------------------- SimCLR view


def simclr_augment(x: Tensor, opts: AugmentOptions) -> Tensor:
    """SimCLR's view after the crop: flip, colour jitter (p), grayscale (p), blur (p); no normalisation."""
    x = random_hflip(x, opts.hflip_prob)
    x = color_jitter(x, *opts.color_jitter, p=opts.color_jitter_prob)
    x = random_grayscale(x, opts.grayscale_prob)
    return gaussian_blur(x, opts.blur_sigma, opts.blur_prob)
