"""Figures: one function per figure; PNG for the report and PDF for papers (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cmim import io  # noqa: E402
from cmim.evals import results  # noqa: E402
from cmim.train.progress import read_jsonl  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    """Training rows of a metrics.jsonl (evaluation rows and torn lines left out)."""
    return [r for r in read_jsonl(path) if "eval" not in r]


def _save(fig, out_png: Path) -> None:
    fig.tight_layout()
    for ext, path in (("png", out_png), ("pdf", out_png.with_suffix(".pdf"))):
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=120)
    plt.close(fig)


def loss_curves(metrics_paths: list[Path], out_png: Path) -> None:
    """Pretraining loss terms against optimiser steps, one panel per run (runs without training skipped)."""
    series = [(Path(p).parent.name, read_metrics(p)) for p in metrics_paths]
    series = [(name, rows) for name, rows in series if rows]
    n = max(1, len(series))
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (name, rows) in zip(axes.flat, series):
        steps = [r["step"] for r in rows]
        terms = [k for k in rows[0] if k not in ("step", "epoch", "lr", "img_per_s", "data_wait", "memory_gb")]
        for term in sorted(terms, key=lambda t: t != "total"):
            ax.plot(steps, [r[term] for r in rows], label=term, lw=2 if term == "total" else 1)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    if not series:
        axes.flat[0].text(0.5, 0.5, "no trained runs", ha="center")
    fig.suptitle("Pretraining losses")
    _save(fig, out_png)


def epoch_points(paths: list[Path]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(base task, run) -> sorted (pretraining epoch, top-1) of a run's final and epoch-checkpoint results."""
    points: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for path in paths:
        r = results.read(path)
        base = results.TASK_NAME.match(r["task"]).group("base")
        points[(base, r["run"])][int(r["pretrain_epochs"] or 0)] = r["metrics"]["top1"]
    return {key: sorted(v.items()) for key, v in points.items()}


def accuracy_vs_epochs(paths: list[Path], out_png: Path) -> None:
    """Top-1 against pretraining epochs, one panel per frozen task, one line per run; untrained
    baselines (epoch 0 only) as dashed horizontal references."""
    points = epoch_points(paths)
    tasks = sorted({task for task, _ in points})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.2 * max(1, len(tasks)), 3.8), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for (t, run), pts in sorted(points.items()):
            if t != task:
                continue
            if len(pts) == 1 and pts[0][0] == 0:
                ax.axhline(pts[0][1], ls="--", lw=1, color="gray")
                ax.annotate(run, (0, pts[0][1]), fontsize=7, color="gray", va="bottom")
                continue
            ax.plot([e for e, _ in pts], [a for _, a in pts], marker="o", label=run)
        ax.set_title({"knn": "kNN", "linear_probe": "linear probe"}.get(task, task))
        ax.set_xlabel("pretraining epochs")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not tasks:
        axes.flat[0].text(0.5, 0.5, "no epoch results", ha="center")
    fig.suptitle("Accuracy vs pretraining epochs")
    _save(fig, out_png)


def partial_points(paths: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """run -> sorted (tuned blocks, top-1); a full finetune counts as all blocks tuned."""
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for path in paths:
        r = results.read(path)
        blocks = r["protocol"].get("blocks")
        k = r["encoder"]["depth"] if blocks is None else blocks
        points[r["run"]][k] = r["metrics"]["top1"]
    return {run: sorted(v.items()) for run, v in points.items()}


def partial_finetune(paths: list[Path], out_png: Path) -> None:
    """Partial-finetuning top-1 against the number of tuned last blocks, one line per run."""
    points = partial_points(paths)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for run, pts in sorted(points.items()):
        ax.plot([k for k, _ in pts], [a for _, a in pts], marker="o", label=run)
    ax.set_xlabel("tuned last blocks (all = full finetune)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Partial finetuning")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=7)
    _save(fig, out_png)
