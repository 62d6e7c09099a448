"""The dense tasks' options dataclasses have exactly the schema's keys, order and defaults; the lr conversion."""

from __future__ import annotations

import dataclasses

import pytest

from cmim.config import schema
from cmim.options import SELECTION_KEYS, from_dict
from cmim.options.evals import DetectionOptions, SegmentationOptions

OPTIONS = {"ade20k": SegmentationOptions, "coco": DetectionOptions}


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("task", sorted(OPTIONS))
def test_fields_equal_schema_keys_order_and_defaults(task):
    block = {k: v for k, v in schema()["$defs"][task]["properties"].items() if k not in SELECTION_KEYS}
    fields = {f.name: _plain(f.default) for f in dataclasses.fields(OPTIONS[task])}
    assert list(fields) == list(block), "same keys, same order as the schema"
    assert fields == {k: v.get("default") for k, v in block.items()}
    assert all("type" in v or "enum" in v for v in block.values())


def test_paper_defaults_and_the_absolute_lr():
    seg, det = SegmentationOptions(), DetectionOptions()
    assert (seg.iters, seg.batch_size, seg.lr, seg.layer_decay, seg.warmup_iters) == (160000, 16, 1e-4, 0.65, 1500)
    assert (det.iters, det.batch_size, det.lr, det.layer_decay, det.weight_decay) == (184375, 64, 1e-4, 0.7, 0.1)
    for opts in (seg, det, SegmentationOptions(batch_size=4), DetectionOptions(batch_size=2, lr=3e-4)):
        loop = opts.loop()
        assert loop.base_lr * loop.batch_size / 256 == pytest.approx(opts.lr)   # the peak lr IS `lr`
    loop = det.loop()
    assert loop.lr_schedule == "step" and [round(f * det.iters) for f in loop.lr_drops] == [163889, 177546]
    assert seg.loop().lr_schedule == "poly" and seg.loop().poly_power == 1.0


def test_unknown_keys_fail_with_the_valid_ones_and_selection_keys_are_ignored():
    block = {"runs": "all", "dataset": None, "per_run": {}, "iters": 3}
    assert from_dict(SegmentationOptions, block, "evaluations.ade20k", ignore=SELECTION_KEYS).iters == 3
    opts = from_dict(DetectionOptions, {"anchor_sizes": [8, 16, 32, 64, 128]}, "evaluations.coco")
    assert opts.anchor_sizes == (8, 16, 32, 64, 128)
    with pytest.raises(ValueError, match=r"unknown ade20k option\(s\) \['crop'\]; valid: .*crop_size"):
        from_dict(SegmentationOptions, {"crop": 64}, "evaluations.ade20k")
    with pytest.raises(ValueError, match=r"unknown coco option\(s\) \['lr_step'\]"):
        from_dict(DetectionOptions, {"lr_step": [0.5]}, "evaluations.coco")
