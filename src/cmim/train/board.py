"""TensorBoard event files of a training job, beside its metrics.jsonl; Weights & Biases too when asked.

Why: a paper-scale pretraining runs for days and is watched while it runs. `tensorboard --logdir
results` shows every job of a study live, one TensorBoard run per job folder (results/pretrain/<run>/,
results/eval/<run>/<task>/). The board mirrors metrics.jsonl row for row: every number of a progress
row is a scalar `train/<key>` at the row's step (loss terms, lr, img_per_s, data_wait, memory_gb,
epoch), every number of an evaluation row a scalar `eval/<key>`; the job's resolved config is the
text `config`.

A resumed job appends to the same run without duplicated or missing steps, as metrics.jsonl does
(cmim.train.progress.truncate_jsonl):
  - the engine flushes the board before it writes a resume state, so whenever a state at step S
    exists, every event up to S is on disk;
  - a job resuming from S first rewrites its event files into one holding the events up to S only
    (`truncate_events`, wall times kept), then starts a new file that opens with a purge marker at
    S + 1 (the SessionLog START event of SummaryWriter's purge_step): a TensorBoard that already showed
    the killed session's later points drops them as well.
An event file is appended as the job runs (like metrics.jsonl, not through cmim.io's temp+rename: a
kill tears at most the last record, which every reader skips); the rewrite on resume is atomic.

Weights & Biases: used only when the wandb package is installed and `launch.wandb` or $WANDB_PROJECT
names a project; otherwise nothing is imported and nothing goes over the network.
Rank 0 writes; the other ranks hold a board that does nothing (`NULL`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import time
from pathlib import Path

import yaml

from cmim import io
from cmim.study import config_hash

EVENTS_GLOB = "events.out.tfevents.*"   # TensorBoard's file names (cmim.io temp files start with a dot)
CONFIG_TAG = "config"
REWRITTEN = (CONFIG_TAG, "final")       # written anew by each session (the config) or each finish (final scores)
FLUSH_SECS = 10                          # how stale a live TensorBoard may be
_UID = itertools.count()                 # event files of one process and second stay apart


def event_files(folder: Path) -> list[Path]:
    """A job folder's event files in TensorBoard's reading order (their names start with the creation time)."""
    return sorted(Path(folder).glob(EVENTS_GLOB))


def scalars(row: dict) -> dict[str, float]:
    """The scalars of one metrics.jsonl row: train/<key> of a progress row, eval/<key> of an evaluation row
    (final/<key>: a job's final scores, which go to its result file rather than metrics.jsonl)."""
    kind = next((k for k in ("eval", "final") if k in row), None)
    values = {f"{kind}/{k}": v for k, v in row[kind].items()} if kind else \
        {f"train/{k}": v for k, v in row.items() if k != "step"}
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def truncate_events(folder: Path, max_step: int, log=None) -> int:
    """Rewrite a job folder's event files as one file holding the events at steps <= max_step (returns
    how many): the scalars logged after the state a job resumes from are dropped, as its metrics rows.
    A purge marker met on the way drops what it hides (a rewrite killed half way is redone from all
    files: the last copy of a (tags, step) wins); the config text and the final scores are dropped:
    each session writes the config, each finish the final scores (a rerun of a finished job too)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    files = event_files(folder)
    if not files:
        return 0
    kept: dict[tuple[tuple[str, ...], int], bytes] = {}
    first_time = None
    for path in files:
        for raw in RawEventFileLoader(str(path)).Load():   # stops at a torn last record
            event = event_pb2.Event.FromString(raw)
            first_time = event.wall_time if first_time is None else first_time
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                kept = {key: r for key, r in kept.items() if key[1] < event.step}
            elif event.HasField("summary"):
                tags = tuple(v.tag for v in event.summary.value)
                rewritten = any(t.split("/")[0] in REWRITTEN for t in tags)   # config/text_summary, final/top1
                if not rewritten and event.step <= max_step:
                    kept[(tags, event.step)] = raw
    header = event_pb2.Event(wall_time=first_time or time.time(), file_version="brain.Event:2")
    with io.atomic_path(files[0]) as tmp, open(tmp, "wb") as f:
        writer = RecordWriter(f)
        writer.write(header.SerializeToString())
        for _, raw in sorted(kept.items(), key=lambda item: item[0][1]):   # by step, each tag's order kept
            writer.write(raw)
    for path in files[1:]:
        path.unlink(missing_ok=True)
    if log is not None and len(files) > 1:
        log(f"[board] {folder}: {len(kept)} events up to step {max_step} kept in {files[0].name}")
    return len(kept)


def config_text(config: dict) -> str:
    """The resolved config as TensorBoard text (markdown: an indented block keeps the YAML as written)."""
    plain = json.loads(json.dumps(config, default=str))
    return "\n".join("    " + line for line in yaml.safe_dump(plain, sort_keys=False).splitlines())


def wandb_project(configured: str | None) -> str | None:
    """The W&B project a job logs to: launch.wandb, else $WANDB_PROJECT, else none."""
    return configured or os.environ.get("WANDB_PROJECT") or None


def open_wandb(project: str | None, folder: Path, config: dict, name: str, log=print):
    """A W&B run resumed by id (one per job folder and config), or None: no project named, or the
    wandb package not installed (then nothing is imported and no network call is made)."""
    if project is None:
        return None
    try:
        import wandb
    except ImportError:
        log(f"[board] W&B project {project!r} is named, but the wandb package is not installed: "
            f"TensorBoard only (pip install wandb to mirror the metrics there)")
        return None
    run_id = "cmim-" + config_hash({"folder": str(Path(folder).resolve()), "config": config_hash(config)})
    return wandb.init(project=project, id=run_id, name=name, dir=str(folder), config=config, resume="allow")


class Board:
    """The event file of one job session (rank 0); `Board()` itself does nothing (the other ranks' board).

    Written synchronously in the training process (torch.utils.tensorboard's summary protos, TensorBoard's
    record format): no writer thread, so a flush really is on disk when it returns, and a full disk is
    an OSError here, not a traceback from a thread. The board mirrors metrics.jsonl, which stays the
    record: a failed event write is said once in the log and ends the board for this session, never
    the training job (the next session rewrites the events up to its resume state)."""

    def __init__(self, path: Path | None = None, wandb_run=None, log=print) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.file = open(path, "ab") if path is not None else None   # closed in close()
        self.records = RecordWriter(self.file) if self.file is not None else None
        self.wandb, self.log, self.path, self.flushed = wandb_run, log, path, time.monotonic()

    @classmethod
    def open(cls, folder: Path, resumed_step: int, config: dict, *, name: str, wandb: str | None = None,
             log=print) -> Board:
        """Drop the events after `resumed_step`, then start this session's event file: a purge marker at
        resumed_step + 1 when resuming, the config text (and the W&B run, if one is named)."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from torch.utils.tensorboard.summary import text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        truncate_events(folder, resumed_step, log)
        path = folder / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_UID)}"
        board = cls(path, open_wandb(wandb_project(wandb), folder, config, name, log), log)
        board._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if resumed_step:
            board._write(Event(wall_time=time.time(), step=resumed_step + 1,
                               session_log=SessionLog(status=SessionLog.START)))
        board._write(Event(wall_time=time.time(), step=0, summary=text(CONFIG_TAG, config_text(config))))
        board.flush()
        return board

    def _write(self, event) -> None:
        if self.records is None:
            return
        try:
            self.records.write(event.SerializeToString())
        except OSError as e:
            self._stop(e)

    def _stop(self, error: OSError) -> None:
        self.log(f"[board] the TensorBoard events of this session stop here ({type(error).__name__}: {error}); "
                 f"metrics.jsonl keeps every row")
        self.records = None
        with contextlib.suppress(OSError):
            self.file.close()

    def row(self, row: dict) -> None:
        """One metrics row (progress, evaluation or the final scores) as scalars at its step."""
        from tensorboard.compat.proto.event_pb2 import Event
        from torch.utils.tensorboard.summary import scalar

        values = scalars(row)
        now = time.time()
        for tag, value in values.items():
            self._write(Event(wall_time=now, step=row["step"], summary=scalar(tag, value)))
        if time.monotonic() - self.flushed > FLUSH_SECS:
            self.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=row["step"])

    def flush(self) -> None:
        """Everything written so far on disk (the engine calls it before every resume state)."""
        if self.records is None:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as e:
            self._stop(e)
        self.flushed = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.records is not None:
            self.records = None
            with contextlib.suppress(OSError):
                self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


NULL = Board()
