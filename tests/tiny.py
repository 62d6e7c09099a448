"""A tiny version of the demo study for end-to-end tests (seconds, not minutes)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_RUN = {"arch": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "epochs": 2,
            "warmup_epochs": 0.5, "batch_size": 64, "samples_per_epoch": 384, "checkpoint_epochs": [1, 2],
            "checkpoint_every_steps": 4, "log_every_steps": 2, "base_lr": 1e-3}
TINY_DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
TINY_FINETUNE = {"epochs": 2, "warmup_epochs": 0.5, "batch_size": 64, "base_lr": 2e-3, "samples_per_epoch": 256,
                 "eval_every_epochs": 1, "checkpoint_every_steps": 2, "log_every_steps": 2}

# Seconds-long dense trainings on the 64 px scenes (small heads, few anchors and RoIs).
TINY_SEGMENTATION = {"iters": 6, "warmup_iters": 1, "batch_size": 4, "lr": 5e-3, "drop_path": 0.0, "crop_size": 64,
                     "scale": [256, 64], "test_scale": [256, 64], "slide_crop": 64, "slide_stride": 64,
                     "channels": 16, "aux_channels": 8, "checkpoint_every_steps": 3, "log_every_steps": 2,
                     "examples": 2}
TINY_DETECTION = {"iters": 6, "warmup_iters": 1, "batch_size": 4, "lr": 2e-3, "drop_path": 0.0, "image_size": 64,
                  "anchor_sizes": [8, 16, 32, 64, 128], "out_channels": 16, "head_channels": 16, "fc_channels": 32,
                  "rpn_batch_size_per_image": 64, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                  "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32,
                  "detections_per_img": 20, "checkpoint_every_steps": 3, "log_every_steps": 2, "examples": 2}


def tiny_config(methods=("mae",), **launch) -> dict:
    """Fashion-MNIST subset + small scene sets; the given methods plus both baselines."""
    cfg = {
        "seed": 0,
        "datasets": {
            "fmnist": {"format": "fashion-mnist", "image_size": 32, "eval_crop_pct": 1.0, "max_samples": 600,
                       "shard_max_count": 250},
            "scenes_ade": {"format": "demo-ade20k", "image_size": 64,
                           "demo": {"n_train": 12, "n_val": 6, "size": 64, "seed": 0}},
            "scenes_coco": {"format": "demo-coco", "image_size": 64,
                            "demo": {"n_train": 12, "n_val": 6, "size": 64, "seed": 0}},
        },
        "run_defaults": {"dataset": "fmnist", **TINY_RUN},
        "runs": {},
        # LARS moves a weight by lr x 0.001 of its norm per step, so a probe of few steps needs a large lr
        "evaluations": {"linear_probe": {"features": "cached", "epochs": 20, "warmup_epochs": 2, "batch_size": 128,
                                         "base_lr": 6.4},
                        "knn": {"k": 10},
                        "finetune": dict(TINY_FINETUNE),
                        "partial_finetune": dict(TINY_FINETUNE, blocks=[0, 1])},
        "launch": {"launcher": "inprocess", "cpus_per_task": 2, "num_workers": 0, **launch},
    }
    for m in methods:
        cfg["runs"][m] = {"method": m}
        if m in ("mae", "can", "cmae"):
            cfg["runs"][m][m] = dict(TINY_DECODER)
    cfg["runs"]["random_init"] = {"method": "random_init"}
    cfg["runs"]["raw_pixels"] = {"method": "raw_pixels"}
    if methods:  # the dense tasks on the first method only: they are the slowest jobs
        cfg["evaluations"]["ade20k"] = {"runs": [methods[0]], **TINY_SEGMENTATION}
        cfg["evaluations"]["coco"] = {"runs": [methods[0]], **TINY_DETECTION}
    return cfg


def fmnist_only(cfg: dict) -> dict:
    """The config without the scene datasets, and so without the dense tasks that read them."""
    cfg["datasets"] = {"fmnist": cfg["datasets"]["fmnist"]}
    for task in ("ade20k", "coco"):
        cfg["evaluations"].pop(task, None)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False))
    return path


def tiny_run(method: str = "mae", **overrides) -> dict:
    """A resolved tiny run (32 px, patch 8, 2 blocks of width 64) on the 600-image fmnist split."""
    from cmim.config import deep_merge, validate
    from cmim.study import resolve_run

    cfg = tiny_config(methods=(method,))
    cfg["runs"][method] = deep_merge(cfg["runs"][method], overrides)
    return resolve_run(validate(cfg), method)
