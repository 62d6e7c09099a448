"""Result tables of our runs: one function per table, markdown for reading and CSV for everything else.

These are the per-task tables (every run of a task, baselines included); the paper tables, which put
our numbers beside the papers', are built from the same result files (cmim.report.paper_tables).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cmim import io, study
from cmim.evals import results


def encoder_label(spec: dict | None) -> str:
    return study.encoder_label(spec) if spec else "-"


def _pct(value) -> float:
    return round(value, 2) if value is not None else float("nan")


def probe_rows(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        r = results.read(path)
        rows.append({"run": r["run"], "method": r["method"], "encoder": encoder_label(r.get("encoder")),
                     "pretrain epochs": r["pretrain_epochs"], "feature": r["feature"],
                     "probe": r["protocol"]["features"], "top-1": _pct(r["metrics"]["top1"]),
                     "top-5": _pct(r["metrics"].get("top5")), "train": r["dataset"]["train_samples"],
                     "val": r["dataset"]["val_samples"], "dataset": r["dataset"]["name"]})
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, title: str, out_md: Path, out_csv: Path) -> pd.DataFrame:
    io.write_text(out_csv, df.to_csv(index=False))
    body = df.to_markdown(index=False) if len(df) else "(no results)"
    io.write_text(out_md, f"# {title}\n\n{body}\n")
    return df


def probe_table(paths: list[Path], out_md: Path, out_csv: Path) -> pd.DataFrame:
    """Linear-probe top-1 of every probed run, baselines included, in config order."""
    return _write(probe_rows(paths), "Linear probe on frozen features (top-1 / top-5 %, val split)", out_md, out_csv)


def eval_rows(task: str, paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        r = results.read(path)
        p, m = r["protocol"], r["metrics"]
        row = {"run": r["run"], "method": r["method"], "encoder": encoder_label(r.get("encoder")),
               "pretrain epochs": r["pretrain_epochs"]}
        if task in ("ade20k", "coco"):
            row.update({"iters": p.get("iters"), "batch": p.get("batch_size"), "lr": p.get("lr"),
                        "layer decay": p.get("layer_decay")})
            keys = ("mIoU", "mAcc", "aAcc") if task == "ade20k" else \
                ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75")
            row.update({k: _pct(m.get(k)) for k in keys})
            if "training" in r:
                row["img/s"] = round(r["training"]["img_per_s"], 1)
            row.update({"train": r["dataset"]["train_samples"], "val": r["dataset"]["val_samples"],
                        "dataset": r["dataset"]["name"]})
            rows.append(row)
            continue
        if task == "knn":
            row.update({"feature": r["feature"], "k": p["k"], "T": p["temperature"]})
        else:
            row.update({"pool": p["pool"], "epochs": p["epochs"], "batch": p["batch_size"], "base lr": p["base_lr"],
                        "layer decay": p["layer_decay"]})
            if task == "partial_finetune":
                row["tuned blocks"] = p["blocks"]
        row.update({"top-1": _pct(m["top1"]), "top-5": _pct(m.get("top5"))})
        if "best" in r:
            row.update({"best top-1": _pct(r["best"]["top1"]), "best epoch": r["best"]["epoch"]})
        if "training" in r:
            row["img/s"] = round(r["training"]["img_per_s"], 1)
        row.update({"train": r["dataset"]["train_samples"], "val": r["dataset"]["val_samples"],
                    "dataset": r["dataset"]["name"]})
        rows.append(row)
    return pd.DataFrame(rows)


TITLES = {
    "knn": "Weighted kNN on frozen features (top-1 / top-5 %, val split)",
    "finetune": "End-to-end finetuning (top-1 / top-5 % of the last epoch, val split)",
    "partial_finetune": "Partial finetuning of the last k blocks (top-1 / top-5 %, val split)",
    "ade20k": "ADE20K-layout semantic segmentation, UperNet (mIoU / mAcc / aAcc %, val split)",
    "coco": "COCO-layout detection and instance segmentation, Mask R-CNN (box / mask AP %, val split)",
}


def eval_table(task: str, paths: list[Path], out_md: Path, out_csv: Path) -> pd.DataFrame:
    if task not in TITLES:
        raise ValueError(f"no table for task {task!r}; tables: {sorted(TITLES)}")
    return _write(eval_rows(task, paths), TITLES[task], out_md, out_csv)
