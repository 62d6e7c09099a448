"""Figures: one function per figure; PNG for the report and PDF for papers."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cmim import io  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


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
        terms = [k for k in rows[0] if k not in ("step", "epoch", "lr", "img_per_s")]
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
    fig.tight_layout()
    for ext, path in (("png", out_png), ("pdf", out_png.with_suffix(".pdf"))):
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=120)
    plt.close(fig)
