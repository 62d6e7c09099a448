"""kNN and top-k accuracy against hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from cmim.evals.classify import accuracy, topk_hits
from cmim.evals.knn import knn_accuracy, knn_votes


def test_weighted_vote_matches_a_hand_computation():
    # train features on the unit circle; the test point sits at angle 0
    angles = torch.tensor([0.1, 0.2, 2.0, -0.3, 3.0])
    train = torch.stack([angles.cos(), angles.sin()], dim=1) * 5.0   # scale must not matter (cosine)
    labels = torch.tensor([0, 1, 1, 2, 0])
    test = torch.tensor([[1.0, 0.0]])
    votes = knn_votes(train, labels, test, num_classes=3, k=3, temperature=0.5)
    # the 3 nearest by cosine: angles 0.1 (class 0), 0.2 (class 1), -0.3 (class 2)
    expected = torch.zeros(1, 3, dtype=votes.dtype)
    for angle, cls in ((0.1, 0), (0.2, 1), (-0.3, 2)):
        expected[0, cls] += math.exp(math.cos(angle) / 0.5)
    assert torch.allclose(votes, expected)
    assert votes.argmax().item() == 0


def test_the_weights_can_outvote_the_majority():
    """One very close neighbour outweighs two far ones only when the temperature is low."""
    train = torch.tensor([[1.0, 0.0], [0.2, 1.0], [0.2, -1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.05]])
    assert knn_votes(train, labels, test, 2, k=3, temperature=0.05).argmax().item() == 0
    assert knn_votes(train, labels, test, 2, k=3, temperature=100.0).argmax().item() == 1


def test_knn_accuracy_on_separable_features_is_perfect_and_k_is_capped_by_the_train_size():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    train_y = torch.arange(4).repeat(5)
    train_x = centres[train_y] + torch.randn(20, 4, generator=g)
    test_y = torch.arange(4).repeat(3)
    test_x = centres[test_y] + torch.randn(12, 4, generator=g)
    assert knn_accuracy(train_x, train_y, test_x, test_y, 4, k=50)["top1"] == 100.0


@pytest.mark.parametrize("classes", [2, 3, 5, 10])
def test_topk_is_reported_for_every_k_up_to_the_number_of_classes(classes):
    logits = torch.randn(8, classes)
    labels = torch.randint(0, classes, (8,))
    out = accuracy(logits, labels)
    assert set(out) == ({"top1", "top5"} if classes >= 5 else {"top1"})
    if classes == 5:
        assert out["top5"] == 100.0
    hits = topk_hits(logits, labels)
    assert hits[1] == int((logits.argmax(1) == labels).sum())


def test_a_class_without_a_vote_is_never_a_top5_hit():
    """8 classes; the test points' 3 neighbours are all of class 0, so classes 1..7 got no vote and
    tie at 0. Which 4 of them fill a top 5 is topk's tie order, an accident of the implementation:
    a label among them was a top-5 hit under the old rule, one outside it was not. Neither is now."""
    train = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 4])
    test = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    votes = knn_votes(train, labels, test, num_classes=8, k=3, temperature=0.1)
    assert (votes[:, 1:] == 0).all() and (votes[:, 0] > 0).all()       # the plain totals: zeros tie
    zero_order = votes.topk(5, dim=1).indices[0, 1:].tolist()             # what the tie order picks
    label_in_ties, label_outside = zero_order[-1], ({1, 2, 3, 4, 5, 6, 7} - set(zero_order)).pop()
    assert topk_hits(votes, torch.tensor([label_in_ties, label_outside]))[5] == 1   # the old rule's accident
    got = knn_accuracy(train, labels, test, torch.tensor([label_in_ties, label_outside]), 8, k=3, temperature=0.1)
    assert got == {"top1": 0.0, "top5": 0.0}
    got = knn_accuracy(train, labels, test, torch.tensor([0, 0]), 8, k=3, temperature=0.1)
    assert got == {"top1": 100.0, "top5": 100.0}


def test_top5_counts_every_voted_class_and_only_those():
    """Neighbours of 2 classes: a hit for either (top-1 for the heavier), none for the 6 others."""
    train = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]])   # class 5's two votes outweigh class 2's one
    labels = torch.tensor([2, 5, 5])
    test = torch.tensor([[1.0, 0.0]] * 8)
    scores = knn_votes(train, labels, test, 8, k=3, temperature=0.07, no_vote=float("-inf"))
    assert torch.isinf(scores[0]).sum() == 6
    per_label = [knn_accuracy(train, labels, test[:1], torch.tensor([c]), 8, k=3, temperature=0.07)
                 for c in range(8)]
    assert [r["top5"] for r in per_label] == [100.0 if c in (2, 5) else 0.0 for c in range(8)]
    assert [r["top1"] for r in per_label] == [100.0 if c == 5 else 0.0 for c in range(8)]


def test_a_minus_inf_score_is_never_a_hit_in_topk():
    logits = torch.tensor([[3.0, float("-inf"), float("-inf"), float("-inf"), float("-inf"), float("-inf")]])
    assert topk_hits(logits, torch.tensor([0])) == {1: 1, 5: 1}
    assert all(topk_hits(logits, torch.tensor([c]))[5] == 0 for c in range(1, 6))
