"""The per-task tables (results/tables/<task>.{md,csv,html}): a number a result does not hold is `-`
with a footnote saying why, never `nan`; a result's warnings are footnotes; the .html the report shows
holds every row."""

from __future__ import annotations

import math

import pandas as pd

from cmim.evals import results
from cmim.report import tables

ENCODER = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32}


def result(tmp_path, run: str, task: str, metrics: dict, classes: int, **extra):
    protocol = {"k": 20, "temperature": 0.07, "features": "cached"} if task != "coco" else \
        {"iters": 10, "batch_size": 4, "lr": 1e-4, "layer_decay": 0.7}
    record = results.record(task, {"run": run, "method": "mae", "seed": 0, "epochs": 2, "encoder": ENCODER}, metrics,
                            protocol=protocol, checkpoint={"path": "x", "sha256": "0" * 64, "epoch": 2},
                            dataset={"name": "d", "train_samples": 60, "val_samples": 20, "num_classes": classes},
                            wall_time_s=1.0, feature="cls", **extra)
    path = tmp_path / f"{run}-{task}.json"
    results.write(path, record)
    return path


def test_top5_of_a_two_class_dataset_is_a_dash_with_a_footnote_not_nan(tmp_path):
    """Before: the kNN and probe tables printed `nan` for a 2-class dataset's top-5."""
    paths = [result(tmp_path, "mae", "linear_probe", {"top1": 71.5, "top5": 96.0}, 10),
             result(tmp_path, "tiny", "linear_probe", {"top1": 2.0}, 2,
                    warnings=["under-trained: the training loss went from 0.69 to 0.69"])]
    out = {ext: tmp_path / f"linear_probe.{ext}" for ext in ("md", "csv", "html")}
    tables.probe_table(paths, out["md"], out["csv"], out["html"])
    md = out["md"].read_text()
    assert "nan" not in md.lower()
    row = next(line for line in md.splitlines() if line.startswith("| tiny"))
    assert [c.strip() for c in row.strip("|").split("|")][7] == "-"            # the top-5 column
    assert "1. top-5 `-`: not reported with fewer than 5 classes, where it would be 100% by construction " \
           "(tiny (2 classes))" in md
    assert "2. tiny (linear_probe): warning: under-trained: the training loss went from 0.69" in md
    csv = pd.read_csv(out["csv"])
    assert math.isnan(csv.loc[1, "top-5"]) and csv.loc[0, "top-5"] == 96.0 and "classes" not in csv
    page = out["html"].read_text()
    assert "<td>tiny</td>" in page and "<td>mae</td>" in page and "<td>71.5</td>" in page and "nan" not in page
    assert "<li>top-5 `-`: not reported" in page and "under-trained" in page


def test_a_coco_number_cocoeval_leaves_undefined_is_a_dash_too(tmp_path):
    metrics = {"bbox_AP": 1.5, "bbox_AP50": 3.5, "bbox_AP75": None, "segm_AP": 1.0, "segm_AP50": 2.0,
               "segm_AP75": 0.5}
    path = result(tmp_path, "mae", "coco", metrics, 10, warnings=["the COCO ground truth x: 1 annotation(s) ..."])
    out = {ext: tmp_path / f"coco.{ext}" for ext in ("md", "csv", "html")}
    tables.eval_table("coco", [path], out["md"], out["csv"], out["html"])
    md = out["md"].read_text()
    assert "nan" not in md.lower() and "bbox_AP75 `-`: the result holds no value" in md and "(mae)" in md
    assert "mae (coco): warning: the COCO ground truth x" in md
    assert "<td>3.5</td>" in out["html"].read_text()


def test_no_results_is_said_in_every_format(tmp_path):
    out = {ext: tmp_path / f"knn.{ext}" for ext in ("md", "csv", "html")}
    tables.eval_table("knn", [], out["md"], out["csv"], out["html"])
    assert "(no results)" in out["md"].read_text() and "(no results)" in out["html"].read_text()
