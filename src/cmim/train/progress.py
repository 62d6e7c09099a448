"""Progress for long training: a readable line, a metrics.jsonl row, and throughput figures."""

from __future__ import annotations

import datetime
import json
import time
from collections import defaultdict
from pathlib import Path


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0, seconds))))


class Meter:
    """Averages loss terms over a logging window and measures images/s over the same window."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.images = 0
        self.started = time.perf_counter()

    def add(self, terms: dict[str, float], images: int) -> None:
        for k, v in terms.items():
            self.sums[k] += v
        self.count += 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.count) for k, v in self.sums.items()}

    def rate(self) -> float:
        return self.images / max(1e-9, time.perf_counter() - self.started)


def progress_line(run: str, epoch: int, epochs: int, step: int, total: int, terms: dict[str, float],
                  lr: float, img_s: float, eta_s: float) -> str:
    losses = " ".join(f"{k} {v:.4f}" for k, v in sorted(terms.items(), key=lambda kv: kv[0] != "total"))
    return (f"[{run}] epoch {epoch + 1}/{epochs} step {step}/{total} ({100 * step / max(1, total):.0f}%) "
            f"| {losses} | lr {lr:.3e} | {img_s:.0f} img/s | ETA {format_eta(eta_s)}")


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from, so a resumed run has no duplicate steps."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if json.loads(r).get("step", 0) <= max_step]
    path.write_text("".join(r + "\n" for r in keep))
