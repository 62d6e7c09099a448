"""COCO box and mask AP with pycocotools, the scorer every reported COCO number comes from (METHODS.md 2.4).

Why pycocotools and the real annotation file: AP depends on details that re-implementations get
subtly wrong (crowd regions, the official `area` of each ground-truth object for the small /
medium / large split, 101-point interpolation), so predictions are converted to COCO result
dicts and scored against `<root>/annotations/instances_val2017.json` itself.

Conventions handled here:
- labels: the detector predicts contiguous labels 1..K (0 is background); label i + 1 is the
  i-th category of the json sorted by id, and results carry the json's own (non-contiguous) id;
- results: bbox in xywh floats (torchvision gives xyxy in original-image pixels), masks
  thresholded at 0.5 and RLE-encoded (`counts` as str, so the results are JSON-serialisable);
- bbox and segm are scored from separate copies without the other field (as detectron2 does),
  so a segm detection's area is its mask area, not its box area;
- no detections at all: pycocotools' `loadRes([])` crashes, so an empty result set is built
  directly; it scores 0 where a number is defined;
- COCO writes -1 for an undefined number (e.g. APs when the split has no small objects): it is
  reported as None, never as -100;
- pycocotools 2.0.9/2.0.10 needed an `info` key in the GT (2.0.11 does not): one is added when
  missing. `summarize()` prints; its text is captured and returned under "summary";
- ground truth no detection can match: a non-crowd box with w or h <= 0 has IoU 0 with anything
  (pycocotools' bbox IoU), a non-crowd object whose segmentation decodes to no pixel likewise for
  masks. Each stays in the ground truth as a missed object, capping recall and so AP below 100 for
  every detector. `unmatchable_annotations` finds them and `ap_ceiling` gives the cap; the
  official json is scored as it is, never rewritten (`ground_truth_warnings` says what it costs).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
MASK_THRESHOLD = 0.5


def _quiet(fn, *args, **kwargs):
    """Run a pycocotools call with its prints captured: (result, printed text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    return out, buf.getvalue()


def load_ground_truth(gt: str | Path | dict) -> COCO:
    """A COCO object from an instances json path or an already loaded dict (not modified)."""
    if isinstance(gt, (str, Path)):
        try:
            data = json.loads(Path(gt).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"COCO ground truth {gt} not found") from None
    else:
        data = copy.deepcopy(gt)
    missing = {"images", "annotations", "categories"} - set(data)
    if missing:
        raise ValueError(f"COCO ground truth {gt if isinstance(gt, (str, Path)) else '(dict)'} lacks "
                         f"{sorted(missing)}: not an instances file")
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    coco = COCO()
    coco.dataset = data
    _quiet(coco.createIndex)
    return coco


class COCOEvaluator:
    """Holds the ground truth and the label <-> category maps; converts and scores predictions."""

    def __init__(self, gt: str | Path | dict) -> None:
        self.gt = load_ground_truth(gt)
        cats = sorted(self.gt.dataset["categories"], key=lambda c: c["id"])
        self.label_to_category = {i + 1: c["id"] for i, c in enumerate(cats)}   # 1..K -> json id
        self.category_to_label = {cid: label for label, cid in self.label_to_category.items()}
        self.num_classes = len(cats)  # K, without the background
        self.image_ids = sorted(self.gt.getImgIds())

    # ------------------------------------------------------------------ converting predictions

    def to_coco_results(self, outputs: list[dict], image_ids, mask_threshold: float = MASK_THRESHOLD) -> list[dict]:
        """torchvision Mask R-CNN outputs (one dict per image, boxes xyxy in original pixels, labels,
        scores, masks [N, 1, H, W] probabilities) + their COCO image ids -> COCO result dicts."""
        image_ids = [int(i) for i in image_ids]
        if len(outputs) != len(image_ids):
            raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
        results = []
        for out, image_id in zip(outputs, image_ids):
            results += self._image_results(out, image_id, mask_threshold)
        return results

    def _image_results(self, out: dict, image_id: int, mask_threshold: float) -> list[dict]:
        boxes = out["boxes"].detach().float().cpu()
        if not len(boxes):
            return []
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        unknown = sorted(set(labels) - set(self.label_to_category))
        if unknown:
            raise ValueError(f"image {image_id}: labels {unknown} outside 1..{self.num_classes}")
        rles = self._encode_masks(out["masks"], mask_threshold) if "masks" in out else [None] * len(boxes)
        results = []
        for box, score, label, rle in zip(xywh, scores, labels, rles):
            r = {"image_id": image_id, "category_id": self.label_to_category[label], "bbox": box,
                 "score": float(score)}
            if rle is not None:
                r["segmentation"] = rle
            results.append(r)
        return results

    @staticmethod
    def _encode_masks(masks: torch.Tensor, threshold: float) -> list[dict]:
        """[N, 1, H, W] probabilities -> N RLEs with str counts."""
        binary = (masks.detach()[:, 0] > threshold).to(torch.uint8).cpu().numpy()  # [N, H, W]
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))    # wants [H, W, N]
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
        return rles

    # ------------------------------------------------------------------ scoring

    def evaluate(self, results: list[dict], iou_types=IOU_TYPES, *, image_ids=None) -> dict:
        """COCO result dicts -> {"bbox_AP", ..., "segm_ARl"} in percent (None where COCO says -1)
        and "summary": the text of every `summarize()`.

        `image_ids`: score only these images (COCOeval's params.imgIds), e.g. the first N of a split
        (max_val_samples) or the images its shards hold; None = every image of the ground truth.
        An image in the list without any detection still counts (its objects are all missed)."""
        if image_ids is not None:
            image_ids = sorted({int(i) for i in image_ids})
            unknown = sorted(set(image_ids) - set(self.image_ids))
            if unknown:
                raise ValueError(f"image ids not in the ground truth: {unknown[:10]}")
        scores: dict = {}
        text = []
        for iou_type in iou_types:
            if iou_type not in IOU_TYPES:
                raise ValueError(f"iou type must be one of {IOU_TYPES}, got {iou_type!r}")
            stats, printed = self._score(results, iou_type, image_ids)
            scores.update({f"{iou_type}_{name}": _percent(v) for name, v in zip(STAT_NAMES, stats)})
            text.append(f"IoU metric: {iou_type}\n{printed}")
        scores["summary"] = "\n".join(text)
        return scores

    def _score(self, results: list[dict], iou_type: str, image_ids=None) -> tuple[list[float], str]:
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        kept = [{k: v for k, v in r.items() if k != drop} for r in results]
        if iou_type == "segm" and any("segmentation" not in r for r in kept):
            raise ValueError("segm scoring needs a 'segmentation' in every result (outputs without masks?)")
        unknown = {r["image_id"] for r in kept} - set(self.image_ids)
        if unknown:
            raise ValueError(f"results for image ids not in the ground truth: {sorted(unknown)[:10]}")
        dt = self._load_results(kept)
        ev = COCOeval(self.gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        _, printed = _quiet(lambda: (ev.evaluate(), ev.accumulate(), ev.summarize()))
        return [float(v) for v in ev.stats], printed

    def _load_results(self, results: list[dict]) -> COCO:
        if results:
            return _quiet(self.gt.loadRes, results)[0]
        empty = COCO()  # loadRes([]) indexes anns[0]: build the empty result set by hand
        empty.dataset = {"images": list(self.gt.dataset["images"]), "categories":
                         copy.deepcopy(self.gt.dataset["categories"]), "annotations": [], "info": {}}
        _quiet(empty.createIndex)
        return empty


def unmatchable_annotations(gt: COCO, image_ids=None) -> dict[str, list[int]]:
    """{"bbox": ids, "segm": ids} of the non-crowd annotations of `image_ids` (None: all) that no
    detection can match: a box with w or h <= 0; a segmentation of zero pixels (the module docstring)."""
    images = set(gt.getImgIds()) if image_ids is None else {int(i) for i in image_ids}
    out: dict[str, list[int]] = {"bbox": [], "segm": []}
    for ann in gt.dataset["annotations"]:
        if ann.get("iscrowd", 0) or ann["image_id"] not in images:
            continue
        box = ann.get("bbox")
        if isinstance(box, list) and len(box) == 4 and (box[2] <= 0 or box[3] <= 0):
            out["bbox"].append(ann["id"])
        if "segmentation" in ann and int(mask_utils.area(gt.annToRLE(ann))) == 0:
            out["segm"].append(ann["id"])
    return {k: sorted(v) for k, v in out.items()}


def ap_ceiling(gt: COCO, unmatchable: list[int], image_ids=None) -> float:
    """The highest AP (%) any detector can score on `image_ids` when the annotations `unmatchable` can
    never be matched: a perfect detector finds every other non-crowd object at precision 1, so in
    each category with n objects, d of them unmatchable, recall stops at (n - d) / n and AP is the
    share of COCO's 101 recall thresholds at or below it; the same at every IoU threshold; the mean
    over the categories with objects, as COCOeval averages. (At most: images with more than 100
    objects cap it further.)"""
    images = set(gt.getImgIds()) if image_ids is None else {int(i) for i in image_ids}
    bad = set(unmatchable)
    counts: dict[int, list[int]] = {}
    for ann in gt.dataset["annotations"]:
        if not ann.get("iscrowd", 0) and ann["image_id"] in images:
            n_d = counts.setdefault(ann["category_id"], [0, 0])
            n_d[0] += 1
            n_d[1] += ann["id"] in bad
    thresholds = np.linspace(0.0, 1.0, 101)        # COCOeval's params.recThrs
    per_class = [np.count_nonzero(thresholds <= np.float64(n - d) / n) / len(thresholds) for n, d in counts.values()]
    return 100.0 * float(np.mean(per_class)) if per_class else 100.0


def ground_truth_warnings(gt: COCO, image_ids=None, where: str = "the ground truth") -> tuple[list[str], dict]:
    """Lines saying which annotations of `where` no detection can match and the AP they cap each
    scorer at, and the same as data ({"bbox": {"ids", "ap_ceiling"}, ...}); ([], {}) when none."""
    found = unmatchable_annotations(gt, image_ids)
    lines, data = [], {}
    for iou_type, what in (("bbox", "a box with width or height <= 0"), ("segm", "a segmentation of zero pixels")):
        ids = found[iou_type]
        if not ids:
            continue
        ceiling = ap_ceiling(gt, ids, image_ids)
        data[iou_type] = {"ids": ids, "ap_ceiling": ceiling}
        shown = ", ".join(map(str, ids[:20])) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        lines.append(f"{where}: {len(ids)} annotation(s) have {what}, which no detection can match (annotation "
                     f"ids {shown}); they are scored as missed, so {iou_type} AP can reach at most {ceiling:.1f} "
                     f"here. The official file is scored as it is; fix it at its source if it is yours")
    return lines, data


def _percent(v: float) -> float | None:
    return None if v < 0 else 100.0 * v


def gather_results(results: list[dict]) -> list[dict]:
    """Every rank's result dicts on every rank (torch.distributed all_gather_object); as given when
    not distributed. Score on one rank afterwards."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(results)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(results))
    return [r for part in parts for r in part]
