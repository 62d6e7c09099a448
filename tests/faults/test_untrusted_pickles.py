"""Untrusted pickles (issue 20, item 7): a file whose unpickling would run code is refused before it
runs, in one line naming the file and the global it asked for, wherever cmim reads a torch file:
resume states, encoder checkpoints, features files, reconstructions.

The planted file's `__reduce__` would create a marker file when unpickled; every test checks that
the marker never appears. Before the hardening resume states were read with `weights_only=False`:
the pretraining below created the marker and went on training.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cmim import io
from cmim.errors import UnsafeFile
from fault_runs import cli, one_line_error, pretrain_args, tiny_run, write_run

SRC = Path(__file__).resolve().parents[2] / "src" / "cmim"


class Planted:
    """Unpickling this calls open(marker, "w"): the file appears if the pickle ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path, legacy: bool = False, **fields) -> Path:
    """A file shaped like a cmim file (its usual keys) with the planted object inside; `legacy`: a raw
    pickle (protocol 2, what torch's legacy loader reads) instead of torch.save's zip."""
    obj = {**fields, "payload": Planted(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)
    return path


def torch_load_calls(source: str) -> list[int]:
    """Lines that call torch.load (a call in the syntax tree; the words in a message to the user are not one)."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]


def test_every_torch_load_in_cmim_goes_through_io_torch_load():
    assert torch_load_calls("x = 1\ntorch.load(p)\nmsg = 'torch.load(p)'\n") == [2]
    direct = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py") if p.name != "io.py"
              for n in torch_load_calls(p.read_text())]
    assert direct == [], f"torch.load outside cmim.io.torch_load: {direct}"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "raw-pickle"])
def test_torch_load_refuses_a_planted_pickle_before_it_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "x.pt", marker, legacy=legacy, step=3)
    with pytest.raises(UnsafeFile) as e:
        io.torch_load(path, what="features file")
    assert not marker.exists()
    message = str(e.value)
    assert str(path) in message and "features file" in message and "open" in message and "\n" not in message


def test_a_damaged_file_is_not_called_unsafe(tmp_path):
    """Cut short or foreign bytes: torch's own error (the caller says "cannot be read"), never UnsafeFile."""
    good = tmp_path / "good.pt"
    torch.save({"step": 1, "x": torch.zeros(3)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 4)
    for path in (cut, noise):
        with pytest.raises(Exception) as e:
            io.torch_load(path)
        assert not isinstance(e.value, UnsafeFile), (path, e.value)


def test_a_real_resume_state_loads_with_exactly_numpys_rng_types(tmp_path):
    from cmim.train.checkpoint import RESUME_GLOBALS, read_resume_state
    from cmim.train.rng import rng_state

    path = tmp_path / "step-000000003.pt"
    io.torch_save({"step": 3, "epoch": 0, "step_in_epoch": 3, "rng": rng_state(), "model": {"w": torch.ones(2)},
                   "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999)}]},
                   "meter": {"images": 12}}, path)
    state = read_resume_state(path)
    assert state["step"] == 3 and state["rng"]["numpy"][1].dtype == np.uint32
    with open(path, "rb") as f:
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in RESUME_GLOBALS}
    assert needed <= allowed and len(RESUME_GLOBALS) == 4, (needed, allowed)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_raw_pickle_stream_as_resume_state_is_refused_not_set_aside(tmp_path, protocol):
    """torch cannot even parse a protocol-4 stream's framing (it would be "unreadable" and moved to
    corrupt/), but no cmim write leaves a raw pickle: it was put there, so it is refused like one that
    asks for a global."""
    from cmim.train.checkpoint import newest_resume

    marker = tmp_path / "pwned"
    path = tmp_path / "resume" / "step-000000007.pt"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"step": 7, "payload": Planted(marker)}, protocol=protocol))
    with pytest.raises(UnsafeFile, match=r"step-000000007.pt: refused to load this resume state"):
        newest_resume(path.parent, "hash", log=lambda m: None)
    assert path.exists() and not marker.exists()


def test_a_planted_resume_state_stops_the_pretraining_and_stays_where_it_is(tmp_path, fmnist_shards):
    """The newest state is planted: the job refuses it in one line naming it and the global, creates no
    marker, does not move it to resume/corrupt/ (it is not damaged) and does not fall back to an older
    state in silence: the user decides."""
    run = tiny_run("mae")
    out = tmp_path / "run"
    marker = tmp_path / "pwned"
    planted = plant(out / "resume" / "step-000000099.pt", marker, step=99, epoch=1, step_in_epoch=0,
                    config_hash="x")
    result = cli(pretrain_args(write_run(tmp_path, run), fmnist_shards["train"], out))
    line = one_line_error(result)
    assert not marker.exists(), "the planted pickle ran"
    assert str(planted) in line and "refused" in line and "open" in line, line
    assert planted.exists() and not (out / "resume" / "corrupt").exists()
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "raw-pickle"])
def test_a_planted_checkpoint_is_refused_by_the_linear_probe(tmp_path, fmnist_shards, legacy):
    from test_error_messages import probe_args

    marker = tmp_path / "pwned"
    path = plant(tmp_path / "checkpoint.pt", marker, legacy=legacy, format="cmim-encoder-v1", encoder={})
    line = one_line_error(cli(probe_args(tmp_path, tiny_run("mae"), path, fmnist_shards)))
    assert not marker.exists()
    assert str(path) in line and "encoder checkpoint" in line and "refused" in line, line


def test_a_planted_features_file_is_refused_by_knn(tmp_path):
    import json

    marker = tmp_path / "pwned"
    path = plant(tmp_path / "fmnist-final.pt", marker, format="cmim-features-v1")
    run = write_run(tmp_path, tiny_run("mae"))
    line = one_line_error(cli(["knn", "--run-config", str(run), "--features", str(path), "--options",
                               json.dumps({"k": 20, "temperature": 0.07}), "--out", str(tmp_path / "knn.json")]))
    assert not marker.exists()
    assert str(path) in line and "features file" in line and "refused" in line, line


def test_a_planted_reconstructions_file_is_refused_by_the_report(tmp_path):
    from cmim.report import paper_figures

    marker = tmp_path / "pwned"
    path = plant(tmp_path / "reconstructions.pt", marker, run="mae", method="mae")
    plan = {"kind": "reconstructions", "title": "t", "files": {"mae": str(path)}}
    with pytest.raises(UnsafeFile, match="reconstructions file"):
        paper_figures.reconstructions_figure(plan, tmp_path / "r.png")
    assert not marker.exists()
