"""A user error is one line naming the file and what to do, through the CLI (issue 12, fault 7):
an unwritable results folder, a checkpoint whose weights do not fit, a resume state passed as a
checkpoint. Before the hardening each of these was a Python traceback, the first naming a hidden
temp file, the second 30 lines of load_state_dict without a file name, the third advising to delete
the state (training progress) it had been given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fault_runs import cli, one_line_error, pretrain_args, tiny_run, write_run


def as_nobody() -> list[str]:
    """A prefix that runs a command as `nobody` (root ignores file permissions)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a command as an unprivileged user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_unwritable_results_folder_is_one_line_naming_the_target():
    prefix = as_nobody()
    work = Path(tempfile.mkdtemp(prefix="cmim-unwritable-"))  # pytest's tmp_path is 0700: nobody cannot enter
    try:
        os.chmod(work, 0o755)  # root's, so nobody may read it but not write in it
        target = work / "results" / "pretrain" / "mae" / "config.yaml"
        result = subprocess.run([*prefix, sys.executable, "-m", "cmim", "write-config", "--json", '{"a": 1}',
                                 "--out", str(target)], capture_output=True, text=True, timeout=120, cwd=work)
    finally:
        shutil.rmtree(work)
    line = one_line_error(result)
    assert f"cannot write {target}" in line or f"cannot write {work}/results" in line, line
    assert "permission" in line, line
    assert ".tmp" not in line


def test_read_only_results_folder_fails_a_pretraining_in_one_line(tmp_path, fmnist_shards):
    out = tmp_path / "run"
    out.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        config = write_run(tmp_path, tiny_run("mae"))
        line = one_line_error(cli(pretrain_args(config, fmnist_shards["train"], out)))
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
    assert f"cannot write {out}/" in line and "read-only" in line, line
    assert ".tmp" not in line


# ----------------------------------------------------------------------------- checkpoints


def probe_args(tmp_path, run: dict, checkpoint, manifests) -> list[str]:
    """`python -m cmim linear-probe` on an exported checkpoint (the augmented-features path)."""
    from cmim.config import validate
    from tiny import tiny_config

    cfg = tiny_config()
    cfg["evaluations"] = {"linear_probe": cfg["evaluations"]["linear_probe"]}
    options = validate(cfg)["evaluations"]["linear_probe"]
    if "features" in options:
        options["features"] = "augmented"
    data = {"dataset": "fmnist", "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32, "eval_crop_pct": 1.0}
    return ["linear-probe", "--run-config", str(write_run(tmp_path, run)), "--checkpoint", str(checkpoint),
            "--train-manifest", str(manifests["train"]), "--val-manifest", str(manifests["val"]),
            "--options", json.dumps(options), "--data", json.dumps(data), "--out", str(tmp_path / "probe.json")]


def test_checkpoint_whose_weights_do_not_fit_is_one_line_naming_it(tmp_path, fmnist_shards):
    from cmim.models.vit import build_encoder
    from cmim.train.checkpoint import ENCODER_FORMAT

    run = tiny_run("mae")
    spec = run["encoder"]
    wrong = build_encoder({**spec, "embed_dim": spec["embed_dim"] // 2})  # the declared spec, other weights
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": ENCODER_FORMAT, "encoder": wrong.state_dict(), "encoder_spec": spec, "run": "mae",
                "method": "mae", "epoch": 2, "step": 12, "probe_feature": "cls"}, path)
    result = cli(probe_args(tmp_path, run, path, fmnist_shards))
    line = one_line_error(result)
    assert str(path) in line and "re-run" in line, line
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


def test_resume_state_passed_as_a_checkpoint_is_named_and_kept(tmp_path, fmnist_shards):
    run = tiny_run("mae")
    state = tmp_path / "resume" / "step-000000004.pt"
    state.parent.mkdir()
    torch.save({"step": 4, "epoch": 0, "model": {}, "optimizer": {}, "rng": {"numpy": np.random.get_state()}},
               state)
    line = one_line_error(cli(probe_args(tmp_path, run, state, fmnist_shards)))
    assert str(state) in line and "resume state" in line, line
    assert "delete" not in line.lower(), f"advises deleting training progress: {line}"
    assert state.exists()
