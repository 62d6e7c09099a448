"""Reconstructions are drawn in the input's colours: a perfect norm-pix prediction gives the input back."""

from __future__ import annotations

import pytest
import torch

from cmim.losses.reconstruction import norm_pix
from cmim.methods.visualize import compose, unnormalise
from cmim.models.patches import patchify

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GREY = ((0.219, 0.219, 0.219), (0.332, 0.332, 0.332))


def images(grey: bool, mean, std) -> torch.Tensor:
    """Normalised images [2, 3, 32, 32] from uint8 pixels (grey: three equal channels, as Fashion-MNIST)."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 1 if grey else 3, 32, 32), generator=g).float() / 255
    pixels = pixels.expand(2, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (pixels - m) / s


@pytest.mark.parametrize("grey, stats", [(True, IMAGENET), (True, GREY), (False, IMAGENET)])
@pytest.mark.parametrize("norm_pix_target", [True, False])
def test_a_perfect_prediction_draws_the_input(grey, stats, norm_pix_target):
    imgs = images(grey, *stats)
    target = patchify(imgs, 8)                                   # [2, 16, 192]
    pred = norm_pix(target) if norm_pix_target else target      # exactly what the decoder is trained to output
    mask = torch.zeros(2, 16)
    mask[:, ::3] = 1                                             # some patches removed, drawn from the prediction
    out = compose(imgs, pred, mask, 8, norm_pix_target, *stats)
    assert torch.equal(out["reconstruction"], out["input"])
    assert torch.equal(out["input"], unnormalise(imgs, *stats))
    if grey:                                                     # a grey input stays grey
        assert torch.equal(out["reconstruction"][:, 0], out["reconstruction"][:, 2])


def test_a_prediction_off_by_a_constant_per_patch_keeps_the_patch_colour_under_grey_statistics():
    """With a grey dataset's own (equal) channel statistics, a norm-pix prediction that has the patch's
    structure but not its exact values is still grey: no channel offset exists for the model to learn
    (under ImageNet's per-channel statistics a grey patch's three channels differ after normalisation,
    which is what tinted the demo's reconstructions)."""
    imgs = images(True, *GREY)
    target = patchify(imgs, 8)
    pred = 0.5 * norm_pix(target)                                # right shape, half the contrast
    out = compose(imgs, pred, torch.ones(2, 16), 8, True, *GREY)
    assert torch.equal(out["reconstruction"][:, 0], out["reconstruction"][:, 1])
    assert torch.equal(out["reconstruction"][:, 1], out["reconstruction"][:, 2])
