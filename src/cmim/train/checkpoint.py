"""Checkpoints: rolling resume states and exported encoders, all written atomically.

A resume state holds everything to continue bit-for-bit: model (incl. EMA target), optimiser,
grad scaler, schedule position, RNG states and data position (epoch, step in epoch). Only the
newest few are kept. A state saved under another resolved config is never resumed from: it is
moved aside, so a changed hyper-parameter starts a fresh run instead of silently continuing.

Failure rules (a kill or a full disk can strike inside any write):
- every file is written under a hidden temporary name and renamed (cmim.io); a job's start
  removes the temporary files its killed predecessors left (`remove_stale_temp`);
- an unreadable state (cut short) is moved to resume/corrupt/ and named in the log, so it is never
  counted as the newest and never makes rotation delete good states;
- a state is unpickled with weights_only=True (cmim.io.torch_load), allowing exactly what cmim
  writes into one: tensors, numbers, strings, containers and numpy's RNG state (`RESUME_GLOBALS`).
  A state that asks for more was not written by cmim (a results folder shared on a cluster lets
  anyone who can write one file there put it in the next job's way): it is refused with
  `UnsafeFile` and the job stops, leaving the file where it is. It is not set aside as corrupt and
  silently skipped: that would let a planted file go unnoticed and drop a user back to an older
  state without their knowing why;
- an epoch checkpoint is exported before the resume state of that epoch's end is written, so a
  state at epoch E implies ckpt-E exists (`missing_epoch_exports` checks it on resume).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmim import io
from cmim.errors import CheckpointError, UnsafeFile
from cmim.paths import RunFiles
from cmim.study import encoder_label

ENCODER_FORMAT = "cmim-encoder-v1"
KEEP_RESUME = 2
# What np.random.get_state() (a resume state's rng.numpy: ("MT19937", uint32 [624], int, int, float))
# pickles as, beyond plain data: numpy's array reconstructor, ndarray, dtype and the uint32 dtype's
# class. Nothing else.
_NP_CORE = np._core if hasattr(np, "_core") else np.core
RESUME_GLOBALS = (_NP_CORE.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)))


def resume_file(resume_dir: Path, step: int) -> Path:
    return Path(resume_dir) / f"step-{step:09d}.pt"


def save_resume(resume_dir: Path, state: dict[str, Any], keep: int = KEEP_RESUME) -> Path:
    """Write the state for `state['step']`, then drop all but the newest `keep` states."""
    path = resume_file(resume_dir, state["step"])
    io.torch_save(state, path)
    for old in sorted(Path(resume_dir).glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def remove_stale_temp(root: Path, log=print) -> list[Path]:
    """Delete the hidden `.<name>.*.tmp` files that killed writes left under a job's folder."""
    removed = []
    root = Path(root)
    if not root.exists():
        return removed
    for path in sorted(root.rglob(".*.tmp")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log(f"[resume] removed {len(removed)} partial file(s) left by a killed write: "
            f"{', '.join(str(p) for p in removed[:5])}{' ...' if len(removed) > 5 else ''}")
    return removed


def _quarantine(path: Path, reason: str, log) -> Path:
    corrupt = path.parent / "corrupt"
    corrupt.mkdir(exist_ok=True)
    target = corrupt / path.name
    path.replace(target)
    log(f"[resume] {path} is unreadable ({reason}); moved to {target} and not used")
    return target


def newest_resume(resume_dir: Path, config_hash: str, log=print) -> tuple[dict | None, Path | None]:
    """The newest loadable state saved under this config, or (None, None) to start fresh.

    Unreadable states are moved to resume/corrupt/ (kept for inspection, out of rotation); a state
    that asks for more than data (UnsafeFile) stops the job where it lies (the module docstring).
    """
    resume_dir = Path(resume_dir)
    candidates = sorted(resume_dir.glob("step-*.pt"), reverse=True)
    for path in candidates:
        try:
            state = read_resume_state(path)
        except UnsafeFile:
            raise  # planted, not damaged: stop here (the module docstring)
        except Exception as e:  # cut short by a kill or a full disk: fall back to the previous one
            _quarantine(path, io.unreadable_reason(e), log)
            continue
        if state.get("config_hash") != config_hash:
            stale = resume_dir.with_name(f"{resume_dir.name}.stale-{state.get('config_hash')}")
            log(f"[resume] {resume_dir} was saved under another config ({state.get('config_hash')} != "
                f"{config_hash}); moved to {stale}, starting fresh")
            if stale.exists():
                shutil.rmtree(stale)
            resume_dir.rename(stale)
            return None, None
        return state, path
    return None, None


def read_resume_state(path: Path) -> dict:
    """One resume state, unpickled with exactly `RESUME_GLOBALS` allowed (UnsafeFile if it asks for
    more); ValueError if it loads but is not a cmim state."""
    advice = (f"cmim's resume states hold only tensors, numbers and numpy's RNG state, so this file was not "
              f"written by cmim: look at who wrote it, then delete it (training resumes from the state before it) "
              f"or move {Path(path).parent} aside to start fresh")
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":   # a pickle stream (PROTO opcode), not the zip archive torch.save writes
        raise UnsafeFile(f"{path}: refused to load this resume state: it is a raw pickle stream, not the zip archive "
                         f"torch.save writes (no write of cmim, cut short or not, leaves one; a pickle can run any "
                         f"code); {advice}")
    state = io.torch_load(path, allow=RESUME_GLOBALS, what="resume state", advice=advice)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not a cmim resume state")
    rng = state.get("rng", {}).get("numpy") if isinstance(state.get("rng"), dict) else None
    if rng is not None and not (isinstance(rng, tuple) and len(rng) == 5 and isinstance(rng[1], np.ndarray)
                                and rng[1].dtype == np.uint32):
        raise ValueError("its numpy RNG state is not numpy's (MT19937, uint32 keys, ...)")
    return state


def missing_epoch_exports(epochs: list[int], done_epochs: int, path_of) -> list[int]:
    """Epochs at or before `done_epochs` whose export is missing (would be lost for good on resume)."""
    return [e for e in epochs if e <= done_epochs and not Path(path_of(e)).exists()]


def export_encoder(path: Path, encoder: torch.nn.Module, spec: dict, **meta: Any) -> None:
    """The pretrained encoder alone, with the shape needed to rebuild it (what evaluations load)."""
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    io.torch_save({"format": ENCODER_FORMAT, "encoder": state, "encoder_spec": dict(spec), **meta}, path)


def read_encoder_checkpoint(path: Path) -> dict:
    """Load an exported encoder checkpoint with clear errors for missing or foreign files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"encoder checkpoint {path} not found; run the pretrain step for it first "
                              f"(snakemake {path})")
    try:
        ckpt = io.torch_load(path, what="encoder checkpoint")
    except UnsafeFile:
        if not _is_resume_state(path):
            raise
        raise CheckpointError(
            f"{path} is a resume state (model + optimiser + RNG, for continuing training), not an "
            f"exported encoder; keep it (training resumes from it) and pass the run's checkpoint.pt or "
            f"epochs/ckpt-E.pt instead") from None
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({io.unreadable_reason(e)}); "
                              f"if it was cut short, re-export it by re-running its pretrain rule (training "
                              f"resumes from the run's resume/ states, nothing is retrained)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != ENCODER_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a cmim encoder checkpoint (format {found}); "
                              f"expected '{ENCODER_FORMAT}' as written by `python -m cmim pretrain`")
    return ckpt


def _is_resume_state(path: Path) -> bool:
    """Does the file load as a cmim resume state (weights only, numpy's RNG state allowed)?"""
    try:
        state = read_resume_state(path)
    except Exception:
        return False
    return "optimizer" in state


def _shape_mismatches(model: torch.nn.Module, state: dict) -> list[str]:
    own = model.state_dict()
    out = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return out


def load_encoder(path: Path, expected_spec: dict | None = None) -> tuple[torch.nn.Module | None, dict]:
    """Rebuild the encoder from an exported checkpoint; None for the raw-pixel baseline."""
    from cmim.models.vit import build_encoder

    ckpt = read_encoder_checkpoint(path)
    if ckpt["encoder"] is None:
        return None, ckpt
    spec = ckpt["encoder_spec"]
    if expected_spec is not None and dict(expected_spec) != dict(spec):
        diff = ", ".join(f"{k}: checkpoint {spec.get(k)} vs config {expected_spec.get(k)}"
                         for k in sorted(set(spec) | set(expected_spec)) if spec.get(k) != expected_spec.get(k))
        raise CheckpointError(f"{path}: the encoder's shape does not match the run's config ({diff}); "
                              f"re-run pretraining for this config, or fix the run's arch / patch / image size")
    encoder = build_encoder(spec)
    state = ckpt["encoder"]
    mismatched = _shape_mismatches(encoder, state)
    own = set(encoder.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if mismatched or missing or unexpected:
        parts = [f"{len(mismatched)} with other shapes ({'; '.join(mismatched[:3])})" if mismatched else "",
                 f"{len(missing)} missing ({', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})" if unexpected else ""]
        raise CheckpointError(f"{path}: its weights do not fit the {encoder_label(spec)} encoder it declares: "
                              f"{'; '.join(p for p in parts if p)}; the file was not written by this cmim "
                              f"version or was edited: re-run its pretrain rule")
    encoder.load_state_dict(state)
    return encoder, ckpt


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks (a ViT-B checkpoint takes about a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def link_epoch_export(run_dir: Path, epoch: int, out: Path, log=print) -> None:
    """Materialise a run's epoch checkpoint (exported under resume/ while training) as a rule output:
    a hard link (no second copy of a large encoder), a copy where links are not possible."""
    source = RunFiles(Path(run_dir)).resume_epoch_checkpoint(epoch)
    if not source.exists():
        raise CheckpointError(f"{source} not found: run {run_dir} did not save epoch {epoch} (is it in "
                              f"its checkpoint_epochs? was resume/ deleted?); re-run its pretraining "
                              f"(snakemake --force {run_dir}/checkpoint.pt)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    try:
        os.link(source, out)
    except OSError:
        with io.atomic_path(out) as tmp:
            shutil.copyfile(source, tmp)
    log(f"[epoch checkpoint] {out} -> {source}")
