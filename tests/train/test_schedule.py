"""Derived training numbers against hand-computed values."""

import math

import pytest

from cmim.options.loop import absolute_lr
from cmim.train import schedule as S


def test_absolute_lr_scales_with_global_batch():
    assert absolute_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)   # MAE / CMAE paper setting
    assert absolute_lr(2.5e-4, 1024) == pytest.approx(1e-3)     # CAN's README command


def test_warmup_then_half_cosine():
    peak, total, warm = 1.0, 100, 10
    assert S.lr_at(0, total, warm, peak) == 0.0
    assert S.lr_at(5, total, warm, peak) == pytest.approx(0.5)
    assert S.lr_at(10, total, warm, peak) == pytest.approx(1.0)
    assert S.lr_at(55, total, warm, peak) == pytest.approx(0.5)   # half way through the cosine
    assert S.lr_at(100, total, warm, peak, min_lr=0.1) == pytest.approx(0.1)
    t = (70 - warm) / (total - warm)
    assert S.lr_at(70, total, warm, peak) == pytest.approx(0.5 * (1 + math.cos(math.pi * t)))


def test_steps_and_micro_batches():
    assert S.steps_per_epoch(20000, 256) == 78
    assert S.micro_batch_size(256, 2, 2) == 64
    with pytest.raises(ValueError, match="not divisible"):
        S.micro_batch_size(256, 3, 1)
    with pytest.raises(ValueError, match="larger than"):
        S.steps_per_epoch(100, 256)
