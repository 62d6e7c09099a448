"""The linear probe's own checks (issue 20): a probe whose training loss barely moved, or that scores
far below chance, says so in its log and its result instead of passing for a verdict on the features."""

from __future__ import annotations

import math

import pytest
import torch

from cmim.evals.linear_probe import LinearProbe, training_warnings
from cmim.options.evals import ProbeOptions


def two_blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2 balanced classes, 16-d features, the classes 4 apart along one axis: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2).repeat(n // 2)
    x = torch.randn(n, 16, generator=g)
    x[:, 0] += 4.0 * y
    return x, y


def probe(**opts) -> tuple[dict, list[str]]:
    lines: list[str] = []
    data = (*two_blobs(240, 0), *two_blobs(200, 1))
    found = LinearProbe(None, 2, ProbeOptions(features="cached", **opts), torch.device("cpu"), 32, 1.0,
                        log=lines.append).run(cached=data)
    return found, lines


def test_fifteen_lars_steps_on_two_classes_warn_that_the_probe_is_under_trained():
    """The paper's LARS recipe for 1 epoch of 15 batches, all of it warmup: the loss stays at ln 2."""
    found, lines = probe(epochs=1, batch_size=16)
    assert found["steps"] == 15
    under = found["warnings"][0]
    assert under.startswith("under-trained: the training loss went from 0.6") and "after 15 steps" in under
    assert "raise evaluations.linear_probe.epochs" in under
    assert [line for line in lines if "warning:" in line] == [f"[linear probe] warning: {w}" for w in found["warnings"]]


def test_a_probe_that_learns_has_no_warning():
    found, lines = probe(epochs=30, batch_size=16, warmup_epochs=1, base_lr=1.0, optimizer="sgd")
    assert found["top1"] > 90 and found["warnings"] == []
    assert not any("warning" in line for line in lines)


@pytest.mark.parametrize("final,warned", [(0.63, True), (0.62, False)])
def test_under_trained_means_the_loss_kept_more_than_90_percent_of_its_first_value(final, warned):
    first = 0.69
    losses = [first] + [1.0] * 8 + [final] * 3                     # the last epoch: 3 steps at `final`
    got = training_warnings(losses, 3, 60.0, torch.tensor([0, 1] * 50))
    assert (len(got) == 1) is warned and (final > 0.9 * first) is warned


def test_below_chance_is_three_standard_errors_below_the_largest_class():
    val = torch.tensor([0] * 80 + [1] * 20)                         # chance 80%, se = 4%: floor 68%
    floor = 100 * (0.8 - 3 * math.sqrt(0.8 * 0.2 / 100))
    assert floor == pytest.approx(68.0)
    assert training_warnings([1.0, 0.1], 1, 67.9, val)[0].startswith("below chance: top-1 67.90%")
    assert training_warnings([1.0, 0.1], 1, 68.1, val) == []
