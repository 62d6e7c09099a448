"""Resume states: newest first, pruned, never resumed under another config; run lock; signals."""

import os
import signal

import pytest
import torch

from cmim.train import checkpoint as C
from cmim.train.engine import RunLocked, run_lock
from cmim.train.signals import Preempted, StopFlags


def state(step, h="abc"):
    return {"step": step, "config_hash": h, "model": {"w": torch.full((2,), float(step))}}


def test_newest_state_wins_and_old_ones_are_pruned(tmp_path):
    for step in (10, 20, 30):
        C.save_resume(tmp_path / "resume", state(step))
    files = sorted(p.name for p in (tmp_path / "resume").glob("step-*.pt"))
    assert files == ["step-000000020.pt", "step-000000030.pt"]
    loaded, path = C.newest_resume(tmp_path / "resume", "abc")
    assert loaded["step"] == 30 and path.name == "step-000000030.pt"
    assert not list((tmp_path / "resume").glob(".*.tmp"))  # no temp files left behind


def test_unreadable_newest_falls_back_to_the_previous(tmp_path):
    C.save_resume(tmp_path / "r", state(1))
    C.save_resume(tmp_path / "r", state(2))
    (tmp_path / "r" / "step-000000002.pt").write_bytes(b"truncated")
    loaded, _ = C.newest_resume(tmp_path / "r", "abc", log=lambda m: None)
    assert loaded["step"] == 1


def test_state_of_another_config_is_moved_aside_not_resumed(tmp_path):
    C.save_resume(tmp_path / "resume", state(5, h="old"))
    loaded, path = C.newest_resume(tmp_path / "resume", "new", log=lambda m: None)
    assert loaded is None and path is None
    assert (tmp_path / "resume.stale-old" / "step-000000005.pt").exists()


def test_foreign_checkpoint_is_rejected_clearly(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(C.CheckpointError, match="not a cmim encoder checkpoint"):
        C.read_encoder_checkpoint(tmp_path / "x.pt")
    with pytest.raises(C.CheckpointError, match="run the pretrain step"):
        C.read_encoder_checkpoint(tmp_path / "missing.pt")


def test_run_lock_refuses_a_second_trainer(tmp_path):
    with run_lock(tmp_path):
        pid = os.fork()
        if pid == 0:  # a second process trying to train the same run
            try:
                with run_lock(tmp_path):
                    os._exit(0)
            except RunLocked:
                os._exit(7)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 7
    with run_lock(tmp_path):  # released on exit
        pass


def test_signals_only_set_flags_and_stop_without_submitit():
    flags = StopFlags().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flags.save and flags.stop
    finally:
        flags.uninstall()
    with pytest.raises(Preempted, match="state saved at here"):
        flags.hand_over("here")
