"""COCO scoring: ground truth fed back scores 100, shifts score lower, empty and crowd cases as COCO does."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cmim.data import scenes
from cmim.evals.coco_eval import STAT_NAMES, COCOEvaluator, gather_results, load_ground_truth

KEYS = [f"{t}_{n}" for t in ("bbox", "segm") for n in STAT_NAMES]


def _with_empty_image(path) -> dict:
    """The demo json plus one image without annotations, and without an `info` key."""
    gt = json.loads(path.read_text())
    gt.pop("info", None)
    h, w = gt["images"][0]["height"], gt["images"][0]["width"]
    gt["images"].append({"id": 4242, "file_name": "empty.jpg", "height": h, "width": w})
    return gt


def _outputs_from_gt(ev: COCOEvaluator, shift: int = 0, score: float = 1.0):
    """torchvision-style outputs that reproduce the non-crowd ground truth (optionally shifted right/down)."""
    outputs, ids = [], []
    for image_id in ev.image_ids:
        info = ev.gt.imgs[image_id]
        anns = [a for a in ev.gt.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]                       # xywh -> xyxy
        masks = np.stack([ev.gt.annToMask(a) for a in anns]) if anns else np.zeros((0, info["height"], info["width"]))
        masks = torch.from_numpy(np.roll(masks, (shift, shift), axis=(1, 2))).float()[:, None]
        outputs.append({"boxes": boxes + shift, "labels": torch.tensor([ev.category_to_label[a["category_id"]]
                                                                        for a in anns], dtype=torch.int64),
                        "scores": torch.full((len(anns),), score), "masks": masks})
        ids.append(image_id)
    return outputs, ids


@pytest.fixture(scope="module")
def demo_eval(demo_coco_gt):
    return COCOEvaluator(_with_empty_image(demo_coco_gt))


def test_label_maps_follow_the_sorted_json_categories(demo_coco_gt, demo_eval):
    assert demo_eval.label_to_category == {i + 1: c for i, c in enumerate(scenes.COCO_CATEGORY_IDS)}
    assert demo_eval.category_to_label[23] == 10 and demo_eval.num_classes == 10
    from_path = COCOEvaluator(demo_coco_gt)  # the real file (with `info`) loads too
    assert from_path.label_to_category == demo_eval.label_to_category
    assert 4242 in demo_eval.image_ids and 4242 not in from_path.image_ids


def test_ground_truth_fed_back_scores_100_for_boxes_and_masks(demo_eval):
    outputs, ids = _outputs_from_gt(demo_eval)
    results = demo_eval.to_coco_results(outputs, ids)
    assert {r["category_id"] for r in results} <= set(scenes.COCO_CATEGORY_IDS)
    assert max(r["category_id"] for r in results) > demo_eval.num_classes  # json ids, not labels
    json.dumps(results)                                                      # RLE counts are str
    scores = demo_eval.evaluate(results)
    assert set(scores) == set(KEYS) | {"summary"}
    for t in ("bbox", "segm"):
        assert scores[f"{t}_AP"] == pytest.approx(100.0)
        assert scores[f"{t}_AP50"] == pytest.approx(100.0)
        assert scores[f"{t}_AR100"] == pytest.approx(100.0)
    assert "Average Precision" in scores["summary"] and "IoU metric: segm" in scores["summary"]


def test_a_shifted_copy_scores_lower(demo_eval):
    outputs, ids = _outputs_from_gt(demo_eval, shift=3)
    scores = demo_eval.evaluate(demo_eval.to_coco_results(outputs, ids))
    for t in ("bbox", "segm"):
        assert 0.0 < scores[f"{t}_AP"] < 90.0


def test_no_predictions_score_zero_and_never_crash(demo_eval):
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
              "masks": torch.zeros(0, 1, 64, 64)} for _ in demo_eval.image_ids]
    results = demo_eval.to_coco_results(empty, demo_eval.image_ids)
    assert results == []
    scores = demo_eval.evaluate(results)
    for key in KEYS:
        assert scores[key] is None or scores[key] == 0.0
    assert scores["bbox_AP"] == 0.0 and scores["segm_AR100"] == 0.0


def _crowd_gt() -> dict:
    """One 40 x 40 image: an object (category 7) at rows/cols 2..11 and a crowd region of category 7."""
    crowd = np.zeros((40, 40), np.uint8)
    crowd[20:36, 20:36] = 1
    counts, flat, value, run = [], crowd.ravel(order="F"), 0, 0
    for v in flat:  # uncompressed RLE, column-major, starting with a run of zeros (what COCO stores)
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    obj = [2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]
    return {
        "images": [{"id": 5, "file_name": "a.jpg", "height": 40, "width": 40}],
        "categories": [{"id": 7, "name": "thing"}, {"id": 30, "name": "other"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "segmentation": [obj], "area": 100.0,
             "bbox": [2.0, 2.0, 10.0, 10.0], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 7, "segmentation": {"counts": counts, "size": [40, 40]},
             "area": 256.0, "bbox": [20.0, 20.0, 16.0, 16.0], "iscrowd": 1},
        ],
    }


def _square(x0: int, y0: int, side: int) -> torch.Tensor:
    m = torch.zeros(1, 40, 40)
    m[0, y0:y0 + side, x0:x0 + side] = 1.0
    return m


def _outputs(extra_xy: tuple[int, int]) -> list[dict]:
    """The true object (score 0.5) and a higher-scored extra 16 x 16 detection at extra_xy."""
    x, y = extra_xy
    return [{"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0], [x, y, x + 16.0, y + 16.0]]),
             "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.5, 0.9]),
             "masks": torch.stack([_square(2, 2, 10), _square(x, y, 16)])}]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_a_detection_on_a_crowd_region_is_not_a_false_positive(iou_type):
    ev = COCOEvaluator(_crowd_gt())
    on_crowd = ev.evaluate(ev.to_coco_results(_outputs((20, 20)), [5]), iou_types=(iou_type,))
    on_background = ev.evaluate(ev.to_coco_results(_outputs((2, 20)), [5]), iou_types=(iou_type,))
    assert on_crowd[f"{iou_type}_AP"] == pytest.approx(100.0)
    assert on_background[f"{iou_type}_AP"] < 60.0          # the top-scored detection is now a false positive
    assert on_crowd[f"{iou_type}_APl"] is None             # no large objects: COCO's -1 -> None, not -100
    assert on_crowd[f"{iou_type}_APs"] == pytest.approx(100.0)


def test_masks_are_thresholded_and_encoded_as_rle():
    ev = COCOEvaluator(_crowd_gt())
    probs = torch.zeros(1, 1, 40, 40)
    probs[0, 0, 5:9, 5:10] = 0.7
    probs[0, 0, 20:30, 20:30] = 0.4                        # below 0.5: not part of the mask
    out = [{"boxes": torch.tensor([[5.0, 5.0, 10.0, 9.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.3]),
            "masks": probs}]
    (r,) = ev.to_coco_results(out, [5])
    assert r["category_id"] == 30 and r["bbox"] == [5.0, 5.0, 5.0, 4.0] and isinstance(r["segmentation"]["counts"], str)
    decoded = mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
    assert decoded.sum() == 20 and decoded[5:9, 5:10].all()


def test_bad_inputs_are_named(tmp_path):
    ev = COCOEvaluator(_crowd_gt())
    out = _outputs((20, 20))
    with pytest.raises(ValueError, match="1 outputs but 2 image ids"):
        ev.to_coco_results(out, [5, 6])
    bad = copy.deepcopy(out)
    bad[0]["labels"] = torch.tensor([1, 3])
    with pytest.raises(ValueError, match=r"labels \[3\] outside 1..2"):
        ev.to_coco_results(bad, [5])
    with pytest.raises(ValueError, match="not in the ground truth"):
        ev.evaluate(ev.to_coco_results(out, [99]))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_ground_truth(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not an instances file"):
        load_ground_truth({"images": []})
    assert gather_results([{"a": 1}]) == [{"a": 1}]       # not distributed: unchanged


# ----------------------------------------------------------------------------- ground truth no detection can match


def _degenerate(path, boxes=(), masks=()) -> dict:
    """The demo json with the annotations `boxes` given a zero-width box and `masks` a zero-area polygon."""
    gt = json.loads(path.read_text())
    for ann in gt["annotations"]:
        if ann["id"] in boxes:
            ann["bbox"] = [ann["bbox"][0], ann["bbox"][1], 0.0, ann["bbox"][3]]
        if ann["id"] in masks:
            x, y = ann["bbox"][:2]
            ann["segmentation"] = [[x, y, x, y + 5, x, y + 9]]          # a line: no pixel
    return gt


def _fed_back_without(ev: COCOEvaluator, leave_out: set[int]) -> list[dict]:
    """The best any detector can do: every annotation but `leave_out` fed back at score 1."""
    outputs, ids = _outputs_from_gt(ev)
    results = ev.to_coco_results(outputs, ids)
    gt_ids = [a["id"] for i in ids for a in ev.gt.imgToAnns[i] if not a["iscrowd"]]
    assert len(gt_ids) == len(results)
    return [r for r, a in zip(results, gt_ids) if a not in leave_out]


def test_a_zero_area_box_caps_box_ap_at_the_ceiling_pycocotools_reaches(demo_coco_gt):
    """Issue 20: a zero-width box cannot be matched by anything, so AP stays below 100 for every detector.
    ap_ceiling's closed form equals what COCOeval gives a perfect detector, for boxes and masks, and the
    warning names the ids."""
    from cmim.evals.coco_eval import ap_ceiling, ground_truth_warnings, unmatchable_annotations

    clean = COCOEvaluator(demo_coco_gt)
    assert unmatchable_annotations(clean.gt) == {"bbox": [], "segm": []}
    assert ground_truth_warnings(clean.gt) == ([], {})
    first = [a["id"] for a in clean.gt.dataset["annotations"] if not a["iscrowd"]]
    boxes, masks = first[:2], first[2:3]
    ev = COCOEvaluator(_degenerate(demo_coco_gt, boxes=boxes, masks=masks))
    assert unmatchable_annotations(ev.gt) == {"bbox": sorted(boxes), "segm": sorted(masks)}
    scores = {**ev.evaluate(_fed_back_without(ev, set(boxes)), iou_types=("bbox",)),
              **ev.evaluate(_fed_back_without(ev, set(masks)), iou_types=("segm",))}
    assert scores["bbox_AP"] == pytest.approx(ap_ceiling(ev.gt, boxes), abs=1e-9) and scores["bbox_AP"] < 99
    assert scores["segm_AP"] == pytest.approx(ap_ceiling(ev.gt, masks), abs=1e-9) and scores["segm_AP"] < 100
    assert scores["bbox_AP50"] == pytest.approx(scores["bbox_AP"], abs=1e-9)        # the same at every IoU
    lines, data = ground_truth_warnings(ev.gt, where="instances_val2017.json")
    assert data["bbox"] == {"ids": sorted(boxes), "ap_ceiling": ap_ceiling(ev.gt, boxes)}
    assert f"annotation ids {', '.join(map(str, sorted(boxes)))})" in lines[0]
    assert f"bbox AP can reach at most {data['bbox']['ap_ceiling']:.1f}" in lines[0]
    assert "segm AP can reach at most" in lines[1] and str(masks[0]) in lines[1]


def test_the_ceiling_counts_only_the_images_scored_and_never_crowd_regions():
    from cmim.evals.coco_eval import ap_ceiling, unmatchable_annotations

    gt = _crowd_gt()
    gt["images"].append({"id": 6, "file_name": "b.jpg", "height": 40, "width": 40})
    gt["annotations"] += [{"id": 3, "image_id": 6, "category_id": 7, "segmentation": [[1, 1, 9, 1, 9, 9]],
                           "area": 32.0, "bbox": [1.0, 1.0, 0.0, 8.0], "iscrowd": 0},
                          {"id": 4, "image_id": 5, "category_id": 30, "segmentation": [[1, 1, 9, 1, 9, 9]],
                           "area": 32.0, "bbox": [1.0, 1.0, 8.0, 0.0], "iscrowd": 1}]
    coco = load_ground_truth(gt)
    assert unmatchable_annotations(coco)["bbox"] == [3]              # 4 is a crowd region: ignored anyway
    assert unmatchable_annotations(coco, image_ids=[5])["bbox"] == []
    # category 7: 2 objects, 1 unmatchable -> recall at most 0.5 -> 51 of the 101 thresholds
    assert ap_ceiling(coco, [3]) == pytest.approx(100 * 51 / 101)
    assert ap_ceiling(coco, [3], image_ids=[5]) == 100.0
