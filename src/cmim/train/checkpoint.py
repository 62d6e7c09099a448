"""Checkpoints: rolling resume states and exported encoders, all written atomically.

A resume state holds everything to continue bit-for-bit: model (incl. EMA target), optimiser,
grad scaler, schedule position, RNG states and data position (epoch, step in epoch). Only the
newest few are kept. A state saved under another resolved config is never resumed from: it is
moved aside, so a changed hyper-parameter starts a fresh run instead of silently continuing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from cmim import io

ENCODER_FORMAT = "cmim-encoder-v1"
KEEP_RESUME = 2


def resume_file(resume_dir: Path, step: int) -> Path:
    return Path(resume_dir) / f"step-{step:09d}.pt"


def save_resume(resume_dir: Path, state: dict[str, Any], keep: int = KEEP_RESUME) -> Path:
    """Write the state for `state['step']`, then drop all but the newest `keep` states."""
    path = resume_file(resume_dir, state["step"])
    io.torch_save(state, path)
    for old in sorted(Path(resume_dir).glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def newest_resume(resume_dir: Path, config_hash: str, log=print) -> tuple[dict | None, Path | None]:
    """The newest loadable state saved under this config, or (None, None) to start fresh."""
    resume_dir = Path(resume_dir)
    candidates = sorted(resume_dir.glob("step-*.pt"), reverse=True)
    for path in candidates:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a file truncated by a full disk: fall back to the previous one
            log(f"[resume] skipping unreadable {path}: {e!r}")
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


def export_encoder(path: Path, encoder: torch.nn.Module, spec: dict, **meta: Any) -> None:
    """The pretrained encoder alone, with the shape needed to rebuild it (what evaluations load)."""
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    io.torch_save({"format": ENCODER_FORMAT, "encoder": state, "encoder_spec": dict(spec), **meta}, path)


def read_encoder_checkpoint(path: Path) -> dict:
    """Load an exported encoder checkpoint with clear errors for missing or foreign files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} not found; run the pretrain step for it first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a checkpoint ({e!r}); delete it and re-run pretraining") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != ENCODER_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a cmim encoder checkpoint (format {found}); "
                         f"expected '{ENCODER_FORMAT}' as written by `python -m cmim pretrain`")
    return ckpt


def load_encoder(path: Path, expected_spec: dict | None = None) -> tuple[torch.nn.Module | None, dict]:
    """Rebuild the encoder from an exported checkpoint; None for the raw-pixel baseline."""
    from cmim.models.vit import build_encoder

    ckpt = read_encoder_checkpoint(path)
    if ckpt["encoder"] is None:
        return None, ckpt
    spec = ckpt["encoder_spec"]
    if expected_spec is not None and dict(expected_spec) != dict(spec):
        diff = {k: (spec.get(k), expected_spec.get(k)) for k in set(spec) | set(expected_spec)
                if spec.get(k) != expected_spec.get(k)}
        raise ValueError(f"{path}: encoder shape {diff} (checkpoint, expected) does not match the config; "
                         f"re-run pretraining or fix the run's arch/patch/image size")
    encoder = build_encoder(spec)
    result = encoder.load_state_dict(ckpt["encoder"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: weights do not fit a {spec} encoder: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return encoder, ckpt
