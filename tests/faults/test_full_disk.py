"""A disk that fills while a run writes (issue 12): a small tmpfs mounted as the run's folder, filled
to the last byte just before one write. The run stops with one line naming the file and the cause
(through the CLI, no traceback); once space is freed, the same command resumes with nothing lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pytest

from fault_inject import fill_filesystem
from fault_runs import assert_equals_reference, ok, one_line_error, pretrain, reference_run


@contextlib.contextmanager
def small_disk(path, size="32m"):
    """A tmpfs of `size` at `path` (root only; skips with the reason where mounting is impossible)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def reference(tmp_path_factory, fmnist_shards):
    return reference_run(tmp_path_factory, fmnist_shards["train"])


# id -> (the write the disk fills before, the file its error must name)
WRITES = {
    "resume-state": ({"write": "torch", "match": "step-000000006.pt"}, "resume/step-000000006.pt"),
    "epoch-export": ({"write": "torch", "match": "ckpt-2.pt"}, "resume/epochs/ckpt-2.pt"),
    "final-metrics": ({"write": "copy", "match": "metrics.jsonl"}, "run/metrics.jsonl"),
}


@pytest.mark.parametrize("case", [c if c == "resume-state" else pytest.param(c, marks=pytest.mark.slow)
                                  for c in WRITES])
def test_full_disk_fails_in_one_line_then_resumes_after_space_is_freed(tmp_path, reference, case):
    where, named = WRITES[case]
    with small_disk(tmp_path / "disk") as disk:
        out, filler = disk / "run", disk / "filler"
        result = pretrain(reference["config"], reference["manifest"], out, {"fill": "before", "filler": str(filler),
                                                                             **where})
        line = one_line_error(result)
        assert result.returncode == 1
        assert named in line and "disk is full" in line, line
        assert ".tmp" not in line, f"the error names a temporary file: {line}"
        assert not (out / "summary.json").exists()
        filler.unlink()  # the user frees space
        ok(pretrain(reference["config"], reference["manifest"], out))
        assert_equals_reference(out, reference["out"])


def test_a_metrics_row_that_does_not_fit_is_not_left_half_written(tmp_path):
    """The disk fills mid-row: the kernel writes what fits in the file's last block and returns a
    short count; the row is cut back off and the error names the file (the run stops there and
    resumes from its last state; before, a torn row stayed and the next row was glued to it)."""
    from cmim.train.progress import append_jsonl, read_jsonl

    with small_disk(tmp_path / "disk", size="1m") as disk:
        path = disk / "metrics.jsonl"
        pad = 4096 - 20 - len(json.dumps({"step": 1, "pad": ""}) + "\n")
        append_jsonl(path, {"step": 1, "pad": "x" * pad})  # 20 bytes left in the file's first 4 KiB page
        before = path.read_bytes()
        fill_filesystem(disk / "filler")
        with pytest.raises(OSError, match=r"cannot write .*metrics.jsonl: the disk is full"):
            append_jsonl(path, {"step": 2, "total": 1.0, "lr": 0.001, "img_per_s": 100.0})
        assert path.read_bytes() == before, "a half row was left behind"
        (disk / "filler").unlink()
        append_jsonl(path, {"step": 2, "total": 1.0})
        assert [r["step"] for r in read_jsonl(path)] == [1, 2]
