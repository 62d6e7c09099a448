"""kill -9 inside every write of a pretraining run (and between two of them), then the same command
again: the rerun cleans up after the killed write, resumes, and ends with the final weights, every
epoch checkpoint and every metrics row of an uninterrupted run (CPU, same seed: bit-identical).

The run (fault_runs.RUN): 2 epochs x 4 steps; resume states at steps 3 and 6 and at the epoch ends
4 and 8; a metrics row every 2 steps; encoders exported at epochs 1 and 2 (issue 12, faults 1, 3, 4, 9).
"""

from __future__ import annotations

import json

import pytest

from fault_runs import assert_equals_reference, killed, ok, pretrain, reference_run, temp_files

DEFAULT_RUN = ("resume-state", "final-checkpoint")   # the rest: -m slow


@pytest.fixture
def reference(tmp_path_factory, fmnist_shards):
    """The uninterrupted run, through the same CLI (computed once per session)."""
    return reference_run(tmp_path_factory, fmnist_shards["train"])


def states(out) -> list[str]:
    return sorted(p.name for p in (out / "resume").glob("step-*.pt"))


def export_comes_first(out) -> None:
    """Fault 1: no state past epoch 1's end exists before its export does, so the rerun redoes it."""
    assert states(out) == ["step-000000003.pt"], f"a state past epoch 1 exists before its export: {states(out)}"


def torn_last_line(out) -> None:
    """The kill landed inside the append: the last line of the run's metrics is half a JSON row."""
    last = (out / "resume" / "metrics.jsonl").read_text().splitlines()[-1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(last)


def throughput_kept(out, reference) -> None:
    """Fault 9: resumed at the very end, the rerun trains nothing; its summary still has the job's
    img/s and FLOPs per image (counted by the session that trained), not 0 and null."""
    summary, ref = json.loads((out / "summary.json").read_text()), reference["summary"]
    assert summary["resumed_from"] and summary["resumed_from"].endswith("step-000000008.pt")
    assert summary["steps"] == ref["steps"] == 8 and summary["images_seen"] == ref["images_seen"]
    assert summary["img_per_s"] > 0, f"img/s after a resume at the end: {summary['img_per_s']}"
    assert summary["flops_per_image"] == ref["flops_per_image"] and ref["flops_per_image"] > 0
    assert summary["wall_time_s"] > 0


# id -> (fault, a partial file must be left by the kill, check after the kill, check after the rerun)
KILLS = {
    # a periodic resume state cut in half (fault 3: its temp file used to stay forever)
    "resume-state": ({"die": "inside", "write": "torch", "match": "step-000000006.pt"}, True, None, None),
    # the epoch-1 encoder export cut in half (fault 1: the state of epoch 1's end used to be written
    # before the export, so the resumed run started at epoch 2 and never wrote it)
    "epoch-export": ({"die": "inside", "write": "torch", "match": "ckpt-1.pt"}, True, export_comes_first, None),
    # between two writes: right after the state of epoch 1's end is in place (fault 1, as reported)
    "after-epoch-end-state": ({"die": "after", "match": "step-000000004.pt"}, False, None, None),
    # half a metrics row appended (fault 4: the rerun used to fail with a bare JSONDecodeError)
    "metrics-append": ({"die": "inside", "write": "append", "match": "metrics.jsonl", "nth": 3}, False, torn_last_line,
                       None),
    # the final encoder (a rule output) cut in half, after the last state: the rerun resumes at the end
    "final-checkpoint": ({"die": "inside", "write": "torch", "match": "checkpoint.pt"}, True, None, throughput_kept),
    # metrics.jsonl copied into place, cut in half
    "final-metrics": ({"die": "inside", "write": "copy", "match": "metrics.jsonl"}, True, None, None),
    # summary.json cut in half: everything else is written (fault 9 again)
    "summary": ({"die": "inside", "write": "bytes", "match": "summary.json"}, True, None, throughput_kept),
}


@pytest.mark.parametrize("case", [c if c in DEFAULT_RUN else pytest.param(c, marks=pytest.mark.slow) for c in KILLS])
def test_kill_9_inside_a_write_then_rerun_loses_nothing(tmp_path, reference, case):
    fault, partial, after_kill, after_rerun = KILLS[case]
    out = tmp_path / "run"
    killed(pretrain(reference["config"], reference["manifest"], out, fault))
    assert not (out / "summary.json").exists()
    if partial:
        assert temp_files(out), "the kill must land inside the write (a partial temp file left behind)"
    if after_kill:
        after_kill(out)
    ok(pretrain(reference["config"], reference["manifest"], out))
    if after_rerun:
        after_rerun(out, reference)
    assert_equals_reference(out, reference["out"])
