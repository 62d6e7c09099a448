"""Helpers of the fault-injection suite (tests/faults/): tiny pretraining runs through the CLI, with
a fault injected by tests/fault_inject.py, and the comparisons against an uninterrupted run.

Everything goes through `python -m cmim pretrain` in a subprocess (what the pretrain rule runs), so a
SIGKILL really kills a process and the same tests run against any cmim version of the checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
INJECT = HERE / "fault_inject.py"

# the whole launch block (older cmim versions read it raw): in this process, no loader workers
INPROCESS = {"launcher": "inprocess", "nodes": 1, "gpus_per_node": 0, "tasks_per_node": None, "cpus_per_task": 2,
             "mem_gb": None, "timeout_min": 30, "partition": None, "account": None, "qos": None, "constraint": None,
             "max_requeues": 3, "signal_delay_s": 120, "slurm_setup": [], "slurm_extra": {}, "num_workers": 0}


# the run of the fault suite: 2 epochs x 4 steps; resume states at steps 3 and 6 (every 3) and at the
# epoch ends 4 and 8; a metrics row every 2 steps; encoders exported at epochs 1 and 2
RUN = dict(batch_size=32, samples_per_epoch=128, checkpoint_every_steps=3, log_every_steps=2,
           checkpoint_epochs=[1, 2])


def tiny_run(method: str = "mae", **overrides) -> dict:
    """tests/tiny.py's resolved tiny run: 2 epochs x 6 steps, a state every 4 steps and at each epoch
    end, a metrics row every 2 steps, encoders exported at epochs 1 and 2."""
    try:
        from tiny import tiny_run as resolved
    except ImportError:  # older checkouts keep it in conftest
        from conftest import tiny_run as resolved
    return resolved(method, **overrides)


def reference_run(tmp_path_factory, manifest: Path) -> dict:
    """The uninterrupted run of RUN through the CLI, once per test session (shared by the fault modules)."""
    folder = tmp_path_factory.getbasetemp() / "fault-reference"
    out = folder / "run"
    config = write_run(folder, tiny_run("mae", **RUN))
    if not (out / "summary.json").exists():
        ok(pretrain(config, manifest, out))
    return {"config": config, "out": out, "manifest": Path(manifest),
            "summary": json.loads((out / "summary.json").read_text())}


def write_run(folder: Path, run: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run['run']}.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def pretrain_args(run_config: Path, manifest: Path, out: Path) -> list[str]:
    return ["pretrain", "--run-config", str(run_config), "--manifest", str(manifest), "--out", str(out),
            "--launch", json.dumps(INPROCESS)]


def cli(args: list[str], fault: dict | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m cmim <args>`, or the same through fault_inject.py with `fault` injected."""
    cmd = [sys.executable, str(INJECT), json.dumps(fault), *args] if fault else [sys.executable, "-m", "cmim", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def pretrain(run_config: Path, manifest: Path, out: Path, fault: dict | None = None) -> subprocess.CompletedProcess:
    return cli(pretrain_args(run_config, manifest, out), fault)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def killed(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == -9, (f"the fault did not fire (exit {result.returncode})\n"
                                     f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def epoch_checkpoint(out: Path, epoch: int) -> Path:
    """Where training exports epoch `epoch` (under resume/ since the hardening; epochs/ before it)."""
    from cmim.paths import RunFiles

    files = RunFiles(Path(out))
    if hasattr(files, "resume_epoch_checkpoint"):
        return files.resume_epoch_checkpoint(epoch)
    return files.epoch_checkpoint(epoch)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["encoder"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metric_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in Path(path).read_text().splitlines() if line.strip()]


def temp_files(root: Path) -> list[Path]:
    """Hidden partial files of killed atomic writes (cmim.io names them .<name>.<random>.tmp)."""
    return sorted(p for p in Path(root).rglob(".*.tmp") if p.is_file())


def assert_equals_reference(out: Path, ref: Path, epochs=(1, 2)) -> None:
    """Nothing lost: final weights, every epoch export and every metrics row as in the uninterrupted run."""
    assert (out / "summary.json").exists(), "the rerun must finish"
    assert same_weights(out / "checkpoint.pt", ref / "checkpoint.pt"), "final weights differ from the reference"
    for e in epochs:
        path = epoch_checkpoint(out, e)
        assert path.exists(), f"epoch checkpoint {e} was lost: {path} missing"
        assert same_weights(path, epoch_checkpoint(ref, e)), f"epoch {e} checkpoint differs from the reference"
    assert metric_steps(out / "metrics.jsonl") == metric_steps(ref / "metrics.jsonl")
    assert temp_files(out) == [], f"partial files left: {temp_files(out)}"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's error, checked to be one line (no traceback) and returned."""
    assert result.returncode not in (0, -9), f"expected a clean failure, got exit {result.returncode}"
    err = result.stderr.strip()
    assert "Traceback" not in err, f"a traceback instead of one line:\n{err[-3000:]}"
    lines = err.splitlines()
    assert lines, "no error message on stderr"
    return lines[-1]
