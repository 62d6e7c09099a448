"""The result file of every evaluation: results/eval/<run>/<task>.json, one shape for all tasks.

Why one shape: tables, figures and the report read results without knowing which code wrote
them. Every file holds:
  task        linear_probe | knn | finetune | partial_finetune-k<K> | ade20k | coco, with -ep<E>
              for an epoch checkpoint (the accuracy-vs-epochs data)
  run, method, seed, pretrain_epochs (of the checkpoint: E for -ep<E>), encoder (its shape)
  metrics     the scores, in percent: classification top1 (+ top5 with >= 5 classes);
              ade20k mIoU, mAcc, aAcc; coco bbox_AP ... segm_ARl (COCOeval's 12 numbers each)
  protocol    every setting that decided the score
  checkpoint  {path, sha256, epoch, step} of the encoder that was evaluated (+ source {path, sha256,
              format} of the weights file an imported run came from)
  dataset     {name, train_samples, val_samples, num_classes}
  wall_time_s, and for trained evaluations `training` (summary.json: img/s, GPU-hours, ...)
plus task-specific keys (history, best, per_class_iou, ...). Classification results also keep
top1 / top5 at the top level.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cmim import io
from cmim.train.progress import read_jsonl

TASK_NAME = re.compile(r"^(?P<base>linear_probe|knn|finetune|partial_finetune-k(?P<k>\d+)|ade20k|coco)"
                       r"(?:-ep(?P<epoch>\d+))?$")


def checkpoint_info(path: Path, ckpt: dict, sha256: str) -> dict:
    """The evaluated encoder file; for an imported run also `source`: the weights file it was imported
    from (path, sha256, format), so a result names the released file its number belongs to."""
    info = {"path": str(path), "sha256": sha256, "epoch": ckpt.get("epoch"), "step": ckpt.get("step")}
    if ckpt.get("source"):
        info["source"] = dict(ckpt["source"])
    return info


def record(task: str, run: dict, metrics: dict, *, protocol: dict, checkpoint: dict, dataset: dict,
           wall_time_s: float, **extra) -> dict:
    """One evaluation's result in the common shape (see the module docstring)."""
    if not TASK_NAME.match(task):
        raise ValueError(f"not an evaluation task name: {task!r}")
    untrained = run["method"] in ("random_init", "raw_pixels")
    out = {"task": task, "run": run["run"], "method": run["method"], "seed": run.get("seed"),
           "pretrain_epochs": 0 if untrained else (checkpoint.get("epoch") or run.get("epochs")),
           "encoder": run.get("encoder") if run["method"] != "raw_pixels" else None,
           "metrics": dict(metrics), "protocol": protocol, "checkpoint": checkpoint, "dataset": dataset,
           "wall_time_s": wall_time_s, **extra}
    for key in ("top1", "top5"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def write(path: Path, result: dict) -> None:
    io.write_json(path, result)


def read(path: Path) -> dict:
    result = io.read_json(path)
    if not isinstance(result, dict) or "metrics" not in result:
        raise ValueError(f"{path}: not a cmim evaluation result (no 'metrics'); re-run the evaluation that writes it")
    return result


def eval_rows(metrics_path: Path) -> list[dict]:
    """The periodic evaluation rows a training job logged (metrics.jsonl rows with an `eval` key)."""
    path = Path(metrics_path)
    if not path.exists():
        return []
    return [{"epoch": r["epoch"], "step": r["step"], **r["eval"]} for r in read_jsonl(path) if "eval" in r]


def dumps(result: dict) -> str:
    return json.dumps(result, sort_keys=True)
