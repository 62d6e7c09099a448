"""Progress for long training: a readable line, a metrics.jsonl row, and throughput figures."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from collections import defaultdict
from pathlib import Path

from cmim import io


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0, seconds))))


class Meter:
    """Averages loss terms over a logging window and measures images/s over the same window.

    Terms may be device tensors: they are summed where they are and read once, by `means()` at the
    log line, so a GPU step is not made to wait for its loss values every step."""

    def __init__(self) -> None:
        self.sums: dict = defaultdict(float)
        self.count = 0
        self.images = 0
        self.started = time.perf_counter()

    def add(self, terms: dict, images: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v
        self.count += 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(1, self.count) for k, v in self.sums.items()}

    def rate(self) -> float:
        return self.images / max(1e-9, time.perf_counter() - self.started)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class RunMeter:
    """Throughput of a whole job across its sessions: a resumed job continues the counts its resume
    state recorded, so summary.json gives the job's img/s and FLOPs even when it resumed at the end.
    Time spent in epoch-end evaluations is paused out of the training time."""

    def __init__(self, images: int = 0, train_time: float = 0.0, wall_before: float = 0.0,
                 flops_per_image: float | None = None) -> None:
        self.images, self.train_time, self.wall_before = images, train_time, wall_before
        self.flops_per_image = flops_per_image
        self._session_start = self._running_since = None
        self._session_images, self._session_train = 0, 0.0

    @classmethod
    def from_state(cls, state: dict | None, elapsed: float) -> RunMeter:
        state = state or {}
        return cls(state.get("images", 0), state.get("train_time", 0.0), elapsed, state.get("flops_per_image"))

    def state(self) -> dict:
        return {"images": self.images, "train_time": self._train_time_now(), "flops_per_image": self.flops_per_image}

    def start_session(self) -> None:
        self._session_start = self._running_since = time.perf_counter()

    def pause(self) -> None:
        if self._running_since is not None:
            spent = time.perf_counter() - self._running_since
            self.train_time += spent
            self._session_train += spent
            self._running_since = None

    def resume(self) -> None:
        if self._running_since is None and self._session_start is not None:
            self._running_since = time.perf_counter()

    def stop_session(self) -> None:
        self.pause()

    def add_images(self, n: int) -> None:
        self.images += n
        self._session_images += n

    def _train_time_now(self) -> float:
        running = time.perf_counter() - self._running_since if self._running_since is not None else 0.0
        return self.train_time + running

    def elapsed(self) -> float:
        """Wall time of the job: earlier sessions plus this one so far."""
        now = time.perf_counter() - self._session_start if self._session_start is not None else 0.0
        return self.wall_before + now

    def rate(self) -> float:
        """Images per second of training over the whole job (0 if nothing was trained)."""
        return self.images / self._train_time_now() if self._train_time_now() > 0 else 0.0

    def session_rate(self) -> float:
        running = time.perf_counter() - self._running_since if self._running_since is not None else 0.0
        spent = self._session_train + running
        return self._session_images / spent if spent > 0 else 0.0


def progress_line(run: str, epoch: int, epochs: int, step: int, total: int, terms: dict[str, float],
                  lr: float, img_s: float, eta_s: float) -> str:
    losses = " ".join(f"{k} {v:.4f}" for k, v in sorted(terms.items(), key=lambda kv: kv[0] != "total"))
    return (f"[{run}] epoch {epoch + 1}/{epochs} step {step}/{total} ({100 * step / max(1, total):.0f}%) "
            f"| {losses} | lr {lr:.3e} | {img_s:.0f} img/s | ETA {format_eta(eta_s)}")


def append_jsonl(path: Path, row: dict) -> None:
    """One row, appended whole or not at all: a short write (a disk that fills mid-row writes what
    fits and returns the count; the next write raises ENOSPC) is cut back off before the error is
    raised, naming the file. A kill can still tear the row: `read_jsonl` drops a torn line."""
    line = (json.dumps(row, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise _append_error(e, path) from None
    try:
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(line):
                written += os.write(fd, line[written:])
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # shrinking frees space: no half row stays behind
            raise _append_error(e, path) from None
    finally:
        os.close(fd)


def _append_error(e: OSError, path: Path) -> OSError:
    return io.named_write_error(e, Path(path))


def read_jsonl(path: Path, log=None) -> list[dict]:
    """The rows of a metrics file; a line that is not JSON (torn by a kill or a full disk during an
    append) is dropped and named in the log instead of failing every later reader."""
    rows = []
    for n, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if log is not None:
                log(f"[metrics] {path}:{n}: dropped a torn line (not JSON: {line[:60]!r})")
    return rows


def truncate_jsonl(path: Path, max_step: int, log=None) -> None:
    """Drop rows logged after the checkpoint we resume from (no duplicate steps), and torn lines."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path, log) if r.get("step", 0) <= max_step]
    io.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
