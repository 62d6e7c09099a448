"""Result tables of our runs: one function per table; markdown for reading, HTML for the report,
CSV for everything else.

These are the per-task tables (every run of a task, baselines included); the paper tables, which put
our numbers beside the papers', are built from the same result files (cmim.report.paper_tables). The
HTML of both has one page style (`paper_tables.html_page`) and is shown inside the Snakemake report
(workflow/rules/report.smk registers the .html; a registered .md would only be offered as a download).
A number a result does not hold prints as `-` with a footnote saying why (top-5 with fewer than 5
classes: cmim.evals.classify; a COCO number COCOeval leaves undefined); the CSV leaves the cell
empty. A result's `warnings` (an under-trained probe, ground truth no detector can match) become
footnotes naming the run.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from cmim import io, study
from cmim.evals import results
from cmim.report.paper_tables import html_page, html_table

MISSING = "-"


def encoder_label(spec: dict | None) -> str:
    return study.encoder_label(spec) if spec else MISSING


def _pct(value) -> float | None:
    return round(value, 2) if value is not None else None


def _dataset(r: dict) -> dict:
    d = r["dataset"]
    return {"train": d["train_samples"], "val": d["val_samples"], "dataset": d["name"], "classes": d.get("num_classes")}


def probe_rows(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        r = results.read(path)
        rows.append({"run": r["run"], "method": r["method"], "encoder": encoder_label(r.get("encoder")),
                     "pretrain epochs": r["pretrain_epochs"], "feature": r["feature"],
                     "probe": r["protocol"]["features"], "top-1": _pct(r["metrics"]["top1"]),
                     "top-5": _pct(r["metrics"].get("top5")), **_dataset(r)})
    return pd.DataFrame(rows)


def probe_table(paths: list[Path], out_md: Path, out_csv: Path, out_html: Path | None = None) -> pd.DataFrame:
    """Linear-probe top-1 of every probed run, baselines included, in config order."""
    return _write(probe_rows(paths), "Linear probe on frozen features (top-1 / top-5 %, val split)", paths,
                  out_md, out_csv, out_html)


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
            rows.append({**row, **_dataset(r)})
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
        rows.append({**row, **_dataset(r)})
    return pd.DataFrame(rows)


TITLES = {
    "knn": "Weighted kNN on frozen features (top-1 / top-5 %, val split)",
    "finetune": "End-to-end finetuning (top-1 / top-5 % of the last epoch, val split)",
    "partial_finetune": "Partial finetuning of the last k blocks (top-1 / top-5 %, val split)",
    "ade20k": "ADE20K-layout semantic segmentation, UperNet (mIoU / mAcc / aAcc %, val split)",
    "coco": "COCO-layout detection and instance segmentation, Mask R-CNN (box / mask AP %, val split)",
}
METRICS = ("top-1", "top-5", "best top-1", "mIoU", "mAcc", "aAcc", "bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP",
           "segm_AP50", "segm_AP75")


def eval_table(task: str, paths: list[Path], out_md: Path, out_csv: Path, out_html: Path | None = None) -> pd.DataFrame:
    if task not in TITLES:
        raise ValueError(f"no table for task {task!r}; tables: {sorted(TITLES)}")
    return _write(eval_rows(task, paths), TITLES[task], paths, out_md, out_csv, out_html)


def footnotes(df: pd.DataFrame, paths: list[Path]) -> list[str]:
    """Why a number is `-`, and every warning the results carry: one line each."""
    notes = []
    for column in (c for c in METRICS if c in df and df[c].isna().any()):
        missing = df[df[column].isna()]
        if column == "top-5":
            runs = ", ".join(f"{r} ({n:.0f} classes)" if pd.notna(n) else str(r)
                             for r, n in zip(missing["run"], missing["classes"]))
            notes.append(f"top-5 `-`: not reported with fewer than 5 classes, where it would be 100% by "
                         f"construction ({runs})")
        else:
            notes.append(f"{column} `-`: the result holds no value (COCOeval leaves a number undefined when the "
                         f"val split has no object of that kind) ({', '.join(map(str, missing['run']))})")
    for path in paths:
        r = results.read(path)
        notes += [f"{r['run']} ({r['task']}): warning: {w}" for w in r.get("warnings", [])]
    return notes


def _write(df: pd.DataFrame, title: str, paths: list[Path], out_md: Path, out_csv: Path,
           out_html: Path | None = None) -> pd.DataFrame:
    """<table>.csv (empty cells), .md and .html (`-` cells, numbered footnotes below the table)."""
    notes = footnotes(df, paths) if len(df) else []
    df = df.drop(columns=["classes"], errors="ignore")
    io.write_text(out_csv, df.to_csv(index=False))
    shown = df.astype(object).where(df.notna(), MISSING)
    body = shown.to_markdown(index=False) if len(df) else "(no results)"
    listed = "".join(f"\n{i}. {n}" for i, n in enumerate(notes, 1))
    io.write_text(out_md, f"# {title}\n\n{body}\n" + (f"{listed}\n" if notes else ""))
    if out_html is not None:
        sections = [html_table(shown) if len(df) else '<p class="note">(no results)</p>']
        if notes:
            sections.append('<ol class="note">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ol>")
        io.write_text(out_html, html_page(title, sections))
    return df
