import copy
import math

import pytest
import torch
from torch import nn

from cmim.models.ema import ema_update, momentum_at


def test_ema_update_formula():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = copy.deepcopy(online).requires_grad_(False)
    for p in target.parameters():
        p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def test_momentum_schedule():
    assert momentum_at(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_at(1.0, 0.996, 1.0) == pytest.approx(1.0)
    assert momentum_at(0.5, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(0.3, 0.99, 1.0) == pytest.approx(1 - 0.01 * (math.cos(math.pi * 0.3) + 1) / 2)
    assert all(momentum_at(p, 0.996, 0.996) == pytest.approx(0.996) for p in (0, 0.2, 1))
