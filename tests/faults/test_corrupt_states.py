"""Unreadable resume states (cut short by a kill or a full disk) never poison a run (issue 12, fault 2).

Before the hardening, with the newest two states unreadable the run restarted from step 0 silently,
and every new good state was deleted as soon as it was written: rotation keeps the two highest step
numbers, i.e. the corrupt ones, so the next kill threw the new progress away again.
"""

from __future__ import annotations

import json

import pytest

from fault_runs import assert_equals_reference, killed, ok, pretrain, reference_run


@pytest.fixture
def reference(tmp_path_factory, fmnist_shards):
    return reference_run(tmp_path_factory, fmnist_shards["train"])


def cut_in_half(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_unreadable_newest_states_are_moved_aside_and_never_rotate_good_ones_away(tmp_path, reference):
    out = tmp_path / "run"
    config, manifest = reference["config"], reference["manifest"]
    # a run killed at step 8 (before its metrics row): states 4 and 6 on disk; both then found cut in half
    killed(pretrain(config, manifest, out, {"die": "before", "write": "append", "match": "metrics.jsonl", "nth": 4}))
    resume = out / "resume"
    bad = sorted(resume.glob("step-*.pt"))
    assert [p.name for p in bad] == ["step-000000004.pt", "step-000000006.pt"]
    for path in bad:
        cut_in_half(path)

    # the next run cannot use either: it starts over, writes its state at step 3 (rotating the old
    # ones) and is killed at step 4
    second = killed(pretrain(config, manifest, out, {"die": "before", "write": "append", "match": "metrics.jsonl",
                                                     "nth": 2}))
    log = second.stdout + second.stderr
    for path in bad:
        assert str(path) in log and "unreadable" in log, f"{path.name} not named in the log:\n{log[-2000:]}"
    assert sorted(p.name for p in resume.glob("step-*.pt")) == ["step-000000003.pt"], \
        "the new good state must survive rotation (the unreadable ones must not count as the newest)"
    assert sorted(p.name for p in (resume / "corrupt").glob("step-*.pt")) == [p.name for p in bad]

    # and the run after that resumes from it, ending where an uninterrupted run ends
    ok(pretrain(config, manifest, out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] and summary["resumed_from"].endswith("step-000000003.pt")
    assert_equals_reference(out, reference["out"])
