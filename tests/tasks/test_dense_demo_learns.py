"""The demo's own dense schedules learn: config.yaml's COCO and ADE20K recipes on a random-init encoder
of the demo's shape, on scenes of the demo's sizes, score far above what chance scores.

Slow (about 2.5 min each on 2 cores): they run the demo's real schedule, not a tiny one. Chance is
measured, not assumed: for COCO, boxes of the ground truth's own sizes placed at random with random
classes and scores; for ADE20K, the bound of any constant label map (mAcc 100 / K, mIoU <= 100 / K).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmim import config as cmim_config
from cmim import study
from cmim.data import scene_trees
from cmim.data.shard import shard_split
from cmim.datasets import READER_FORMAT, splits
from cmim.evals.coco_eval import COCOEvaluator
from cmim.launch import launch_job
from cmim.paths import RunFiles
from cmim.tasks.pretrain import write_baseline
from cmim.workflow import data_json
from dense_jobs import LAUNCH, one_thread

pytestmark = pytest.mark.slow
_one_thread = pytest.fixture(autouse=True)(one_thread)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """config.yaml validated, and a random-init encoder of the demo's shape written as a run export."""
    cfg = cmim_config.load_config([ROOT / "config.yaml"])
    root = tmp_path_factory.mktemp("demo_dense")
    run = study.resolve_run(cfg, "random_init")
    files = RunFiles(root / "random_init")
    write_baseline(run, files, log=lambda m: None)
    (root / "config.yaml").write_text(yaml.safe_dump(run))
    return {"cfg": cfg, "root": root, "run_config": root / "config.yaml", "checkpoint": files.checkpoint}


def _scenes(demo: dict, task: str) -> tuple[str, dict]:
    """The task's demo dataset generated and sharded as the DAG does (its layout and source splits from
    cmim.workflow) -> (dataset name, {"tree", "train", "val", "gt_json"})."""
    cfg, root = demo["cfg"], demo["root"]
    dataset = study.dense_dataset(cfg, task)
    layout = READER_FORMAT[cfg["datasets"][dataset]["format"]]
    d = cfg["datasets"][dataset]["demo"]
    scene_trees.generate(root / "src", layout, n_train=d["n_train"], n_val=d["n_val"], size=d["size"], seed=d["seed"],
                    log=lambda m: None)
    tree = scene_trees.tree_root(root / "src", layout)
    sources = splits(cfg, dataset)
    out = {"tree": tree, "gt_json": Path(tree) / "annotations" / f"instances_{sources['val']}.json"}
    for split in ("train", "val"):
        shard_split(layout, tree, dataset, split, sources[split], root / layout / split, log=lambda m: None)
        out[split] = root / layout / split / "manifest.json"
    return dataset, out


def _job(demo: dict, task: str, dataset: str, shards: dict, out: Path) -> dict:
    job = {"task": "detection" if task == "coco" else "segmentation", "run_config": str(demo["run_config"]),
           "checkpoint": str(demo["checkpoint"]), "train_manifest": str(shards["train"]),
           "val_manifest": str(shards["val"]), "options": study.eval_options(demo["cfg"], task, "random_init"),
           "data": json.loads(data_json(demo["cfg"], dataset)), "result": str(out / f"{task}.json"),
           "examples": str(out / f"{task}_examples.png")}
    if task == "coco":
        job["gt_json"] = str(shards["gt_json"])
    return job


def random_box_results(gt_json: Path, seed: int = 0, per_image: int = 20) -> list[dict]:
    """Chance for COCO AP: per val image, `per_image` boxes with the sizes of random GT boxes of the
    split, at uniform positions, random categories and scores."""
    gt = json.loads(Path(gt_json).read_text())
    rng = np.random.default_rng(seed)
    sizes = np.array([a["bbox"][2:] for a in gt["annotations"] if not a.get("iscrowd")])
    cats = [c["id"] for c in gt["categories"]]
    out = []
    for im in gt["images"]:
        for w, h in sizes[rng.integers(len(sizes), size=per_image)]:
            x, y = rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h)
            out.append({"image_id": im["id"], "category_id": int(rng.choice(cats)), "bbox": [x, y, w, h],
                        "score": float(rng.random())})
    return out


def test_the_demo_detection_schedule_learns_far_above_chance(demo, tmp_path):
    dataset, shards = _scenes(demo, "coco")
    job = _job(demo, "coco", dataset, shards, tmp_path)
    launch_job(job, tmp_path / "job", LAUNCH, "coco", log=lambda m: None)
    metrics = json.loads((tmp_path / "coco.json").read_text())["metrics"]
    chance = COCOEvaluator(job["gt_json"]).evaluate(random_box_results(job["gt_json"]), iou_types=("bbox",))
    # measured on this schedule (random_init): box AP / AP50 1.1 / 2.3 (bf16), 2.5 / 5.3 (fp32), mask AP
    # 1.0-1.9; random boxes: AP 0.03-0.05, AP50 0.12-0.19
    assert chance["bbox_AP50"] < 0.5, chance
    assert metrics["bbox_AP50"] > max(1.0, 5 * chance["bbox_AP50"]), (metrics, chance)
    assert metrics["bbox_AP"] > 5 * chance["bbox_AP"] and metrics["segm_AP"] > 0.2, (metrics, chance)


def test_the_demo_segmentation_schedule_learns_far_above_chance(demo, tmp_path):
    dataset, shards = _scenes(demo, "ade20k")
    job = _job(demo, "ade20k", dataset, shards, tmp_path)
    launch_job(job, tmp_path / "job", LAUNCH, "ade20k", log=lambda m: None)
    result = json.loads((tmp_path / "ade20k.json").read_text())
    metrics, k = result["metrics"], result["dataset"]["num_classes"]
    # chance, exactly: one class everywhere scores mAcc = 100 / K and mIoU <= 100 / K (its IoU is its
    # pixel share, every other class 0)
    assert metrics["mAcc"] > 2 * 100 / k and metrics["mIoU"] > 100 / k, (metrics, k)
