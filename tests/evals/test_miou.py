"""Dataset-level mIoU / mAcc / aAcc: hand-computed cases, torchmetrics agreement, rank summation."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmim.evals.miou import SegmentationMetric

IGNORE = 255


def _hand_case():
    """6 valid pixels, 2 ignored (their predictions must not count), class 3 absent from both."""
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 1]]])
    return pred, target


def test_hand_computed_values_with_ignored_pixels_and_an_absent_class():
    m = SegmentationMetric(4, ignore_index=IGNORE)
    m.update(*_hand_case())
    # confusion (rows gt): gt0 -> p0, p1; gt1 -> p1, p1; gt2 -> p2, p0
    assert m.confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    r = m.compute()
    assert r["per_class_iou"][:3] == pytest.approx([100 / 3, 200 / 3, 50.0])
    assert r["per_class_iou"][3] is None and r["per_class_acc"][3] is None
    assert r["per_class_acc"][:3] == pytest.approx([50.0, 100.0, 50.0])
    assert r["mIoU"] == pytest.approx(50.0)            # (1/3 + 2/3 + 1/2) / 3, class 3 left out
    assert r["mAcc"] == pytest.approx(200 / 3)
    assert r["aAcc"] == pytest.approx(200 / 3)         # 4 of 6 valid pixels


def test_a_class_predicted_but_absent_from_ground_truth_counts_zero_iou_and_no_accuracy():
    m = SegmentationMetric(2)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    r = m.compute()
    assert r["per_class_iou"] == pytest.approx([50.0, 0.0]) and r["per_class_acc"] == [pytest.approx(50.0), None]
    assert (r["mIoU"], r["mAcc"], r["aAcc"]) == pytest.approx((25.0, 50.0, 50.0))


def test_updates_accumulate_one_confusion_matrix_not_a_mean_of_batches():
    # batch 1: class 0 right on 1 pixel; batch 2: class 0 wrong on 3 pixels
    batches = [(torch.tensor([[0]]), torch.tensor([[0]])),
               (torch.tensor([[1, 1, 1]]), torch.tensor([[0, 0, 0]]))]
    m = SegmentationMetric(2)
    for p, t in batches:
        m.update(p, t)
    r = m.compute()
    # dataset level: class 0 IoU 1/4, class 1 IoU 0/3 -> 12.5; the mean of per-batch mIoUs would be 50
    assert r["mIoU"] == pytest.approx(12.5)
    assert r["aAcc"] == pytest.approx(25.0)
    m.reset()
    assert int(m.confusion.sum()) == 0


@pytest.mark.parametrize("absent_class", [False, True])
def test_miou_equals_torchmetrics_jaccard_over_several_updates(absent_class):
    from torchmetrics.classification import MulticlassJaccardIndex

    k = 6
    high = k - 1 if absent_class else k  # class 5 never predicted nor labelled: both leave it out of the mean
    g = torch.Generator().manual_seed(0)
    ours = SegmentationMetric(k, ignore_index=IGNORE)
    ref = MulticlassJaccardIndex(num_classes=k, ignore_index=IGNORE, average="macro")
    ref_per_class = MulticlassJaccardIndex(num_classes=k, ignore_index=IGNORE, average="none")
    for _ in range(4):
        target = torch.randint(0, high, (2, 9, 11), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.5, target.clamp(max=high - 1),
                           torch.randint(0, high, target.shape, generator=g))
        ours.update(pred, target)
        ref.update(pred, target)
        ref_per_class.update(pred, target)
    r = ours.compute()
    assert r["mIoU"] / 100 == pytest.approx(float(ref.compute()), abs=1e-6)
    present = [i for i, v in enumerate(r["per_class_iou"]) if v is not None]
    assert len(present) == high
    assert [r["per_class_iou"][i] / 100 for i in present] == pytest.approx(ref_per_class.compute()[present].tolist(),
                                                                           abs=1e-6)


def test_bad_inputs_are_named():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 3\)"):
        m.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="predictions"):
        m.update(torch.tensor([[0, 3]]), torch.zeros(1, 2, dtype=torch.long))


def test_all_reduce_is_a_no_op_without_a_process_group():
    m = SegmentationMetric(4)
    m.update(*_hand_case())
    before = m.confusion.clone()
    m.all_reduce()
    assert torch.equal(m.confusion, before)


def _rank_worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        pred, target = _hand_case()
        m = SegmentationMetric(4)
        m.update(pred[:, rank:rank + 1], target[:, rank:rank + 1])  # rank 0: first row, rank 1: second row
        m.all_reduce()
        torch.save(m.confusion, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_the_ranks_matrices(tmp_path):
    mp.spawn(_rank_worker, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True)
    whole = SegmentationMetric(4)
    whole.update(*_hand_case())
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), whole.confusion)
