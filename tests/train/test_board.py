"""TensorBoard events of a training job: every metric of metrics.jsonl at the same steps (read back
with TensorBoard's own EventAccumulator), no duplicated or missing step after a kill -9 and a resume,
the rewrite on resume on hand-made event files, and W&B only when installed and named."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from torch.utils.tensorboard import SummaryWriter

from cmim.launch import launch_pretrain
from cmim.study import launch_settings
from cmim.train import board
from fault_runs import killed, ok, pretrain, write_run
from tiny import tiny_run


def jsonl_scalars(path: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every number in a metrics.jsonl, as the board names them."""
    out: dict[str, dict[int, float]] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        for tag, value in board.scalars(row).items():
            assert row["step"] not in out.setdefault(tag, {}), f"{tag} twice at step {row['step']} in metrics.jsonl"
            out[tag][row["step"]] = value
    return out


def accumulated(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def raw_scalar_steps(folder: Path) -> Counter:
    """(tag, step) -> how many scalar events the files on disk hold (no reader's purge applied)."""
    seen: Counter = Counter()
    for path in board.event_files(folder):
        for raw in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(raw)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    seen[(value.tag, event.step)] += 1
    return seen


def assert_board_equals_metrics(folder: Path) -> None:
    """Every metric of metrics.jsonl at its step with its value, nothing else, nothing twice."""
    want = jsonl_scalars(folder / "metrics.jsonl")
    acc = accumulated(folder)
    assert set(acc.Tags()["scalars"]) == set(want), (sorted(acc.Tags()["scalars"]), sorted(want))
    for tag, steps in want.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert list(got) == sorted(steps), f"{tag}: steps {list(got)} vs metrics.jsonl {sorted(steps)}"
        for step, value in steps.items():
            assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-9), (tag, step)
    raw = raw_scalar_steps(folder)
    assert max(raw.values()) == 1, f"duplicated on disk: {[k for k, n in raw.items() if n > 1]}"
    assert set(raw) == {(tag, step) for tag, steps in want.items() for step in steps}


def test_events_hold_every_metric_of_metrics_jsonl_at_the_same_steps(tmp_path, fmnist_shards):
    run = tiny_run("mae")
    config = write_run(tmp_path, run)
    out = tmp_path / "run"
    monitor = {"every_epochs": 1, "train_samples": 200, "val_samples": 100, "val_manifest": str(fmnist_shards["val"])}
    launch_pretrain(config, fmnist_shards["train"], out, launch_settings({"launcher": "inprocess", "num_workers": 0}),
                    run["run"], log=lambda m: None, monitor=monitor)
    metrics = jsonl_scalars(out / "metrics.jsonl")
    # loss terms, lr, img/s, data wait, memory and the monitor's evaluation rows are all metrics
    assert {"train/total", "train/recon", "train/lr", "train/img_per_s", "train/data_wait", "train/memory_gb",
            "eval/knn_top1", "eval/monitor_s"} <= set(metrics)
    assert sorted(metrics["train/total"]) == [2, 4, 6, 8, 10, 12] and sorted(metrics["eval/knn_top1"]) == [6, 12]
    assert_board_equals_metrics(out)
    text = accumulated(out).Tensors("config/text_summary")
    assert len(text) == 1 and "method: mae" in text[0].tensor_proto.string_val[0].decode()
    assert len(board.event_files(out)) == 1


def test_a_run_killed_and_resumed_has_no_duplicated_or_missing_steps(tmp_path, fmnist_shards):
    """kill -9 while the state of step 8 is written: the events of steps 7-8 are on disk (the board is
    flushed before every state), the rerun resumes from step 6 and logs step 8 again."""
    run = tiny_run("mae", checkpoint_epochs=[])       # states at steps 4, 6 (epoch end), 8, 12
    config, out = write_run(tmp_path, run), tmp_path / "run"
    killed(pretrain(config, fmnist_shards["train"], out,
                    {"die": "inside", "write": "torch", "match": "step-000000008.pt"}))
    before = raw_scalar_steps(out)
    assert ("train/total", 8) in before, "the killed session's events of step 8 reached the disk"
    ok(pretrain(config, fmnist_shards["train"], out))
    assert_board_equals_metrics(out)
    files = board.event_files(out)
    assert len(files) == 2, files                          # the rewritten first session + the resumed one
    purge = [event_pb2.Event.FromString(r) for r in RawEventFileLoader(str(files[1])).Load()]
    assert any(e.session_log.status == event_pb2.SessionLog.START and e.step == 7 for e in purge)
    events = [event_pb2.Event.FromString(r) for f in files for r in RawEventFileLoader(str(f)).Load()]
    texts = [e for e in events if any(v.tag.startswith(board.CONFIG_TAG) for v in e.summary.value)]
    assert len(texts) == 1, "the config text once, from the session that finished"


def _write(folder: Path, steps, scale: float, purge_step=None) -> None:
    writer = SummaryWriter(str(folder), purge_step=purge_step)
    for step in steps:
        writer.add_scalar("train/total", scale * step, global_step=step)
    writer.add_text(board.CONFIG_TAG, "x", global_step=0)
    writer.close()


def test_truncate_events_keeps_what_a_reader_shows_up_to_the_step(tmp_path):
    """Session 1 logged steps 1-10 and was killed; session 2 resumed from step 4 without the rewrite (a
    rewrite killed half way), purged at 5 and logged 5-7 with other values. Truncating at step 6 keeps
    steps 1-4 of session 1 and 5-6 of session 2, each once, in one file, and no config text."""
    import time

    _write(tmp_path, range(1, 11), 1.0)
    time.sleep(1.1)                                         # event file names start with the second
    _write(tmp_path, range(5, 8), 10.0, purge_step=5)
    assert len(board.event_files(tmp_path)) == 2
    kept = board.truncate_events(tmp_path, 6)
    assert kept == 6 and len(board.event_files(tmp_path)) == 1
    assert raw_scalar_steps(tmp_path) == Counter({("train/total", s): 1 for s in range(1, 7)})
    acc = accumulated(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("train/total")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0),
                                                                       (5, 50.0), (6, 60.0)]
    assert acc.Tags()["tensors"] == []
    assert board.truncate_events(tmp_path, 6) == 6           # idempotent
    assert board.truncate_events(tmp_path / "none", 3) == 0


def test_a_finished_job_run_again_logs_its_final_scores_once(tmp_path):
    """A finished job started again resumes at its last step and finishes at once: its final scores
    (final/..., not in metrics.jsonl) are logged again, the first session's are dropped."""
    first = board.Board.open(tmp_path, 0, {"a": 1}, name="job")
    first.row({"step": 12, "total": 0.5})
    first.row({"step": 12, "final": {"top1": 61.0, "samples": 200}})
    first.close()
    again = board.Board.open(tmp_path, 12, {"a": 1}, name="job")      # nothing left to train
    again.row({"step": 12, "final": {"top1": 61.5, "samples": 200}})
    again.close()
    assert raw_scalar_steps(tmp_path) == Counter({("train/total", 12): 1, ("final/top1", 12): 1,
                                                  ("final/samples", 12): 1})
    assert [e.value for e in accumulated(tmp_path).Scalars("final/top1")] == [61.5]


# ----------------------------------------------------------------------------- Weights & Biases


class FakeWandb(types.ModuleType):
    """A stand-in `wandb` module recording what the board asks of it."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished += 1


def test_wandb_is_never_used_when_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)          # `import wandb` raises ImportError
    said = []
    assert board.open_wandb("my-project", tmp_path, {"a": 1}, "run", log=said.append) is None
    assert "not installed" in said[0]
    b = board.Board.open(tmp_path, 0, {"a": 1}, name="run", wandb="my-project", log=said.append)
    b.row({"step": 1, "total": 0.5})
    b.close()
    assert b.wandb is None and board.event_files(tmp_path)


def test_wandb_installed_but_no_project_named_is_never_used(tmp_path, monkeypatch):
    fake = FakeWandb()
    fake.init = lambda **kwargs: pytest.fail("wandb.init called without a project")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    b = board.Board.open(tmp_path, 0, {"a": 1}, name="run", wandb=None)
    b.row({"step": 1, "total": 0.5})
    b.close()
    assert b.wandb is None


def test_wandb_named_by_launch_or_environment_gets_every_row(tmp_path, monkeypatch, fmnist_shards):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert board.wandb_project(None) is None
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert board.wandb_project(None) == "from-env" and board.wandb_project("from-launch") == "from-launch"
    run = tiny_run("mae")
    out = tmp_path / "run"
    launch = launch_settings({"launcher": "inprocess", "num_workers": 0, "wandb": "from-launch"})
    launch_pretrain(write_run(tmp_path, run), fmnist_shards["train"], out, launch, run["run"], log=lambda m: None)
    assert [i["project"] for i in fake.inits] == ["from-launch"] and fake.inits[0]["resume"] == "allow"
    assert fake.inits[0]["config"] == yaml.safe_load((tmp_path / "mae.yaml").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(s, v) for s, v in fake.logged] == [(r["step"], board.scalars(r)) for r in rows]
    assert fake.finished == 1
