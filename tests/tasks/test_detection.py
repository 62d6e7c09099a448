"""COCO detection through the shared engine: a complete result, the GT-json check, empty detections, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmim.evals.coco_eval import STAT_NAMES
from cmim.launch import launch_job
from cmim.paths import RunFiles
from cmim.tasks.detection import DetectionTask
from cmim.train import distributed
from cmim.train.checkpoint import CheckpointError, file_sha256
from cmim.train.engine import Trainer
from dense_jobs import LAUNCH, det_job, losses, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)
METRICS = {f"{t}_{s}" for t in ("bbox", "segm") for s in STAT_NAMES}


def make_task(encoder, shards, gt=None, **opts) -> DetectionTask:
    job = det_job(encoder, shards, Path("unused"), **opts)
    job.pop("result"), job.pop("examples")
    if gt is not None:
        job["gt_json"] = str(gt)
    return DetectionTask.from_job(job)


def test_a_short_detection_writes_a_complete_result_and_its_loss_falls(dense_encoder, dense_shards, tmp_path):
    launch_job(det_job(dense_encoder, dense_shards, tmp_path, iters=12), tmp_path / "det", LAUNCH, "det",
               log=lambda m: None)
    result = json.loads((tmp_path / "coco.json").read_text())
    assert result["task"] == "coco" and set(result["metrics"]) == METRICS
    assert all(v is None or 0 <= v <= 100 for v in result["metrics"].values())
    assert "Average Precision" in result["coco_summary"] and isinstance(result["detections"], int)
    assert result["protocol"]["lr"] == 2e-3 and result["protocol"]["gt_json"] == str(dense_shards["coco_gt"])
    assert result["protocol"]["lr_drops"] == [0.888889, 0.962963]
    assert result["checkpoint"]["sha256"] == file_sha256(dense_encoder["checkpoint"])
    assert result["dataset"] == {"name": "demo_coco", "train_samples": 12, "val_samples": 6, "num_classes": 10,
                                 "gt_images": 6}
    assert result["training"]["steps"] == 12 and result["training"]["task"] == "detection"
    exported = torch.load(tmp_path / "det" / "checkpoint.pt", weights_only=True)
    gt = json.loads(Path(dense_shards["coco_gt"]).read_text())
    assert exported["format"] == "cmim-detector-v1"
    assert exported["category_ids"] == sorted(c["id"] for c in gt["categories"])
    with Image.open(tmp_path / "coco_examples.png") as im:         # 2 rows of image | GT | prediction
        assert im.format == "PNG" and im.width > 3 * 192 and im.height > 2 * 192
    rows = [json.loads(line) for line in (tmp_path / "det" / "metrics.jsonl").read_text().splitlines()]
    assert {"classifier", "box_reg", "mask", "objectness", "rpn_box_reg"} <= set(rows[0])
    total = losses(tmp_path / "det" / "metrics.jsonl")
    assert len(total) == 12 and np.mean(total[-3:]) < np.mean(total[:3]) - 0.2, total


def _ctx(task, tmp_path, rank=0, world=1):
    env = distributed.DistEnv(rank, world, rank, world, torch.device("cpu"))
    return Trainer(task, RunFiles(tmp_path / f"r{rank}"), env, log=lambda m: None).ctx


def test_no_detections_score_zero_and_scoring_uses_the_jsons_own_category_ids(dense_encoder, dense_shards, tmp_path):
    task = make_task(dense_encoder, dense_shards, box_score_thresh=1.0)      # nothing can pass a score of 1
    scores = task.score(_ctx(task, tmp_path))
    assert scores.pop("detections") == 0
    assert set(scores) == METRICS and scores["bbox_AP"] == scores["segm_AP"] == 0.0
    assert "Average Precision" in task.coco_summary

    task = make_task(dense_encoder, dense_shards, box_score_thresh=0.0, max_val_samples=4)
    ctx = _ctx(task, tmp_path)
    scores = task.score(ctx)
    assert scores["detections"] > 0
    task.model.eval()
    outputs = task.model.predict([torch.full((3, 64, 64), 128, dtype=torch.uint8)])
    cats = {c["id"] for c in json.loads(Path(dense_shards["coco_gt"]).read_text())["categories"]}
    assert {task.evaluator.label_to_category[int(label)] for label in outputs[0]["labels"]} <= cats


def test_each_rank_predicts_its_share_and_rank_0_scores_exactly_the_images_read(dense_encoder, dense_shards,
                                                                                tmp_path, monkeypatch):
    """No process group here: gather and broadcast are stubbed, so each simulated rank's share is seen."""
    import cmim.tasks.detection as det
    from cmim.tasks import transfer

    task = make_task(dense_encoder, dense_shards, box_score_thresh=0.0, max_val_samples=5)
    gathered, scored = [], []
    monkeypatch.setattr(det, "gather_results", lambda r: gathered.append(list(r)) or list(r))
    evaluate = task.evaluator.evaluate
    monkeypatch.setattr(task.evaluator, "evaluate",
                        lambda res, image_ids=None: scored.append(sorted(image_ids))
                        or evaluate(res, image_ids=image_ids))
    one = task.score(_ctx(task, tmp_path))
    monkeypatch.setattr(transfer, "broadcast_from_main", lambda obj, env: obj if env.is_main else dict(one, summary=""))
    shares = [task.score(_ctx(task, tmp_path, rank, 2)) for rank in (0, 1)]
    (r_one, i_one), (r0, i0), (r1, i1) = (gathered[k:k + 2] for k in (0, 2, 4))
    assert len(i_one) == 5 and sorted(i0 + i1) == sorted(i_one) and not set(i0) & set(i1)
    assert scored[0] == sorted(i_one)                                   # AP over the 5 images read, not all 6
    key = lambda r: (r["image_id"], r["category_id"], round(r["score"], 4))   # noqa: E731
    assert sorted(map(key, r0 + r1)) == sorted(map(key, r_one))
    assert shares[0]["bbox_AP"] is not None and shares[1]["bbox_AP"] == one["bbox_AP"]


def test_a_gt_json_that_does_not_match_the_val_shards_fails_before_training(dense_encoder, dense_shards, tmp_path):
    gt = json.loads(Path(dense_shards["coco_gt"]).read_text())

    def variant(name, change):
        doc = json.loads(json.dumps(gt))
        change(doc)
        (tmp_path / name).write_text(json.dumps(doc))
        return tmp_path / name

    renamed = variant("renamed.json", lambda d: d["categories"][0].update(name="Zebra"))
    with pytest.raises(ValueError, match=r"renamed.json does not match the val shards .*val/manifest.json: its "
                                         r"categories differ .*Zebra"):
        make_task(dense_encoder, dense_shards, gt=renamed)
    dropped = variant("dropped.json", lambda d: d.update(images=d["images"][1:]))
    with pytest.raises(ValueError, match=r"dropped.json does not match the val shards.*1 of the shards' 6 images "
                                         r"are not in it"):
        make_task(dense_encoder, dense_shards, gt=dropped)
    resized = variant("resized.json", lambda d: d["images"][2].update(width=65))
    with pytest.raises(ValueError, match=r"resized.json does not match .*1 images differ in file name or size"):
        make_task(dense_encoder, dense_shards, gt=resized)
    train_json = Path(dense_shards["coco_gt"]).with_name("instances_train2017.json")   # the wrong split's file
    with pytest.raises(ValueError, match=r"instances_train2017.json does not match the val shards"):
        make_task(dense_encoder, dense_shards, gt=train_json)
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        make_task(dense_encoder, dense_shards, gt=tmp_path / "missing.json")
    torch.save({"format": "cmim-segmenter-v1", "model": {}}, tmp_path / "seg.pt")
    with pytest.raises(CheckpointError, match=r"seg.pt: not a cmim encoder checkpoint"):
        make_task({**dense_encoder, "checkpoint": tmp_path / "seg.pt"}, dense_shards)


def test_ground_truth_fed_back_scores_100_and_a_zero_area_box_is_named_with_its_ceiling(dense_encoder, dense_shards,
                                                                                         tmp_path, monkeypatch):
    """Issue 20, end to end through the task's scoring (val shards read, image ids gathered, COCOeval
    on the json): the detector's output replaced by the ground truth itself scores 100 on the demo
    val json; on a copy with one zero-width box the job warns as it starts, naming the annotation id
    and the ceiling, and the same ground truth scores exactly that ceiling: the json is not rewritten."""
    gt = json.loads(Path(dense_shards["coco_gt"]).read_text())
    victim = next(a for a in gt["annotations"] if not a["iscrowd"])
    victim["bbox"][2] = 0.0
    broken = tmp_path / "instances_val2017.json"
    broken.write_text(json.dumps(gt))

    def fed_back(task):
        """to_coco_results that ignores the detector and returns every non-crowd GT object of the images."""
        ev = task.evaluator

        def results(outputs, image_ids, threshold=0.5):
            return [{"image_id": int(i), "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                     "segmentation": ev.gt.annToRLE(a)} for i in image_ids for a in ev.gt.imgToAnns[int(i)]
                    if not a["iscrowd"]]
        monkeypatch.setattr(ev, "to_coco_results", results)
        return task

    clean = fed_back(make_task(dense_encoder, dense_shards))
    assert clean.start_warnings() == []
    scores = clean.score(_ctx(clean, tmp_path))
    assert scores["bbox_AP"] == pytest.approx(100.0) and scores["segm_AP"] == pytest.approx(100.0)

    task = fed_back(make_task(dense_encoder, dense_shards, gt=broken))
    (warning,) = task.start_warnings()
    ceiling = task.gt_unmatchable["bbox"]["ap_ceiling"]
    assert task.gt_unmatchable["bbox"]["ids"] == [victim["id"]] and "segm" not in task.gt_unmatchable
    assert f"(annotation ids {victim['id']})" in warning and f"at most {ceiling:.1f}" in warning
    assert str(broken) in warning
    scores = task.score(_ctx(task, tmp_path))
    assert scores["segm_AP"] == pytest.approx(100.0)                 # its mask is intact
    assert scores["bbox_AP"] <= ceiling + 1e-9 and ceiling < 100.0   # the zero-width box is also a false positive
    assert json.loads(broken.read_text()) == gt                      # never rewritten


def test_the_job_logs_and_records_the_unmatchable_ground_truth(dense_encoder, dense_shards, tmp_path, capsys):
    gt = json.loads(Path(dense_shards["coco_gt"]).read_text())
    victim = next(a for a in gt["annotations"] if not a["iscrowd"])
    victim["bbox"][3] = 0.0
    broken = tmp_path / "instances_val2017.json"
    broken.write_text(json.dumps(gt))
    launch_job({**det_job(dense_encoder, dense_shards, tmp_path, iters=1), "gt_json": str(broken)}, tmp_path / "det",
               LAUNCH, "det", log=print)
    lines = capsys.readouterr().out.splitlines()
    logged = [line for line in lines if "warning:" in line]
    assert len(logged) == 1 and f"(annotation ids {victim['id']})" in logged[0], lines
    result = json.loads((tmp_path / "coco.json").read_text())
    assert result["warnings"] == [logged[0].split("warning: ", 1)[1]]
    assert result["unmatchable_ground_truth"]["bbox"]["ids"] == [victim["id"]]
