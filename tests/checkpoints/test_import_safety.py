"""Downloaded files are data, never code: what each format allow-lists, a pickle that would run code,
raw mmengine checkpoints."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types

import pytest
import torch

import checkpoint_files as F
from cmim.checkpoints.importer import import_encoder
from cmim.checkpoints.read import ALLOW, read
from cmim.errors import CheckpointError, UnsafeFile
from cmim.options.checkpoint import CheckpointOptions


class Touch:
    """Unpickling this calls os.system, which creates `target`: what a malicious weights file does."""

    def __init__(self, target) -> None:
        self.target = str(target)

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def _import(path, fmt="auto"):
    return import_encoder(path, F.SPEC, CheckpointOptions(path=str(path), format=fmt), run="imp")


@pytest.mark.parametrize("fmt", ["auto", "mae", "timm", "mmpretrain", "lightning", "cmim"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(fmt, tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": F.encoder().state_dict(), "payload": Touch(target)}, path)
    with pytest.raises(UnsafeFile) as e:
        _import(path, fmt)
    assert "refused to load this weights file: unpickling it would call posix.system" in str(e.value)
    assert "\n" not in str(e.value)
    assert not target.exists(), "the file's code ran"
    pickle.loads(pickle.dumps(Touch(target)))   # the payload is real: unpickled without the guard, it runs
    assert target.exists()


def test_each_format_allow_lists_exactly_what_its_files_hold():
    names = {fmt: sorted(f"{c.__module__}.{c.__qualname__}" for c in classes) for fmt, classes in ALLOW.items()}
    assert names == {"mae": ["argparse.Namespace", "pathlib.PosixPath"], "timm": ["argparse.Namespace"],
                     "mmpretrain": [], "lightning": [], "cmim": []}


def test_mae_training_checkpoints_need_their_namespace_and_paths_and_nothing_else(tmp_path):
    path = F.write("mae-training", F.encoder(), tmp_path)
    source = read(path, "mae")
    assert isinstance(source.obj["args"], argparse.Namespace) and source.obj["args"].output_dir.name == "%j"
    with pytest.raises(UnsafeFile, match=r"would call argparse\.Namespace"):
        read(path, "mmpretrain")        # a format whose files never hold one does not allow it
    auto = read(path, "auto")           # auto allows the union only after the file asked for one of its classes
    assert auto.allowed == ["argparse.Namespace", "pathlib.PosixPath"]
    assert read(F.write("mae-released", F.encoder(), tmp_path), "auto").allowed == []


def test_a_raw_mmengine_checkpoint_is_refused_with_how_to_extract_the_backbone(tmp_path, monkeypatch):
    """message_hub's HistoryBuffer objects (module mmengine.logging.history_buffer) cannot be unpickled as
    data; the file is refused before anything of it runs, saying how to get the backbone out."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self) -> None:
            self.max_length = 1000

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "epoch_1600.pth"
    torch.save({"meta": {"epoch": 1600}, "state_dict": F.CMAE(F.encoder()).state_dict(),
                "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}}}, path)
    for fmt in ("auto", "mmpretrain"):
        with pytest.raises(UnsafeFile) as e:
            _import(path, fmt)
        message = str(e.value)
        assert "a raw mmengine training checkpoint" in message and "builtins.getattr" in message
        assert "extract_backbone_weights.py" in message and "\n" not in message


def test_a_file_that_is_no_torch_file_is_named(tmp_path):
    path = tmp_path / "mae_pretrain_vit_base.pth"
    path.write_text("<html>403 Forbidden</html>")   # a failed download saved as the file
    with pytest.raises((CheckpointError, UnsafeFile), match=str(path)):
        _import(path)
    with pytest.raises(CheckpointError, match=r"weights file .*nothing\.pth not found"):
        _import(tmp_path / "nothing.pth")
