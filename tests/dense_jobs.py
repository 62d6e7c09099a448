"""Job files and options for the dense-task tests (tests/tasks/test_segmentation.py, test_detection.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

DATA = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 64, "eval_crop_pct": 1.0}

# A few seconds of CPU: 64 px crops, 16-wide heads; 48 px slide windows every 16 px (4 per scene,
# overlapping) so sliding, averaging and the interpolated position embedding all run.
SEG_FAST = {"iters": 12, "warmup_iters": 2, "batch_size": 4, "lr": 5e-3, "layer_decay": 0.9, "drop_path": 0.0,
            "crop_size": 64, "scale": [256, 64], "test_scale": [256, 64], "slide_crop": 48, "slide_stride": 16,
            "channels": 16, "aux_channels": 8, "checkpoint_every_steps": 4, "log_every_steps": 1,
            "precision": "fp32", "examples": 3}

# Small heads, few anchors and RoIs, anchors sized for 64 px scenes.
DET_FAST = {"iters": 10, "warmup_iters": 2, "batch_size": 4, "lr": 2e-3, "layer_decay": 0.9, "drop_path": 0.0,
            "image_size": 64, "anchor_sizes": [8, 16, 32, 64, 128], "out_channels": 16, "head_channels": 16,
            "fc_channels": 32, "rpn_batch_size_per_image": 64, "rpn_pre_nms_top_n_train": 100,
            "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
            "box_batch_size_per_image": 32, "detections_per_img": 20, "checkpoint_every_steps": 4,
            "log_every_steps": 1, "precision": "fp32", "examples": 2}

LAUNCH = {"launcher": "inprocess", "nodes": 1, "gpus_per_node": 0, "tasks_per_node": None, "cpus_per_task": 1,
          "num_workers": 0, "mem_gb": None, "timeout_min": 30, "partition": None, "account": None, "qos": None,
          "constraint": None, "max_requeues": 3, "signal_delay_s": 120, "slurm_setup": [], "slurm_extra": {}}


def seg_job(encoder: dict, shards: dict, out: Path, **opts) -> dict:
    """A segmentation job file's contents (what `python -m cmim dense --task ade20k` writes)."""
    return {"task": "segmentation", "run_config": str(encoder["config"]), "checkpoint": str(encoder["checkpoint"]),
            "train_manifest": str(shards["ade20k"]["train"]), "val_manifest": str(shards["ade20k"]["val"]),
            "options": {**SEG_FAST, **opts}, "data": {"dataset": "demo_ade20k", **DATA},
            "result": str(out / "ade20k.json"), "examples": str(out / "ade20k_examples.png")}


def det_job(encoder: dict, shards: dict, out: Path, **opts) -> dict:
    return {"task": "detection", "run_config": str(encoder["config"]), "checkpoint": str(encoder["checkpoint"]),
            "train_manifest": str(shards["coco"]["train"]), "val_manifest": str(shards["coco"]["val"]),
            "gt_json": str(shards["coco_gt"]), "options": {**DET_FAST, **opts},
            "data": {"dataset": "demo_coco", **DATA}, "result": str(out / "coco.json"),
            "examples": str(out / "coco_examples.png")}


def losses(metrics_jsonl: Path, key: str = "total") -> list[float]:
    return [r[key] for r in map(json.loads, Path(metrics_jsonl).read_text().splitlines()) if key in r]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def one_thread():
    """Generator fixture body: tiny convolutions on a shared 2-core machine run fastest on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
