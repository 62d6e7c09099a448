import math

import pytest
import torch

from cmim.losses.reconstruction import masked_mse, norm_pix, visible_mse


def test_norm_pix_by_hand():
    t = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    mean = 3.0
    var = ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3          # unbiased: 14 / 3
    expected = [(v - mean) / math.sqrt(var + 1e-6) for v in (1, 2, 3, 6)]
    assert norm_pix(t).flatten().tolist() == pytest.approx(expected)


def test_masked_mse_by_hand():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [3.0, 3.0]]])
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1.0, 1.0, 0.0]])                             # patches 0, 1 removed
    # per patch: 1, 2, 9 -> mean over removed = 1.5; over kept = 9
    assert masked_mse(pred, target, mask).item() == pytest.approx(1.5)
    assert visible_mse(pred, target, mask).item() == pytest.approx(9.0)


def test_masked_mse_ignores_visible_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float32)
    base = masked_mse(pred, target, mask)
    changed = pred.clone()
    changed[mask == 0] += 100.0
    assert masked_mse(changed, target, mask).item() == pytest.approx(base.item())
    changed[0, 0] += 1.0                                               # a removed patch
    assert masked_mse(changed, target, mask).item() != pytest.approx(base.item())


def test_masked_mse_empty_mask_is_zero():
    assert masked_mse(torch.ones(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2)).item() == 0.0
