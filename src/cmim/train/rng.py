"""Every random draw of a training step from one seed, and the generators' state in a resume state.

Why a module of its own: bitwise resume rests on it. A step reseeds torch, numpy and Python from
(seed, step, micro-batch, rank), so a resumed run draws exactly what the uninterrupted one drew.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of one forward: all randomness in a step (masks, noise, augmentations) comes from it."""
    return (seed * 1_000_003 + step * 1009 + micro * 101 + rank) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    """torch, numpy's and Python's global generators from one seed: timm's Mixup draws from numpy and
    its random erasing from Python, so a step must fix all three to be reproducible after a resume."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
