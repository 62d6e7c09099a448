"""Shared fixtures: small real Fashion-MNIST shards, tiny resolved runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny.py and helper modules


# the session-scoped local SLURM cluster (tests/slurm_cluster.py) and the dense-task shards (tests/dense_fixtures.py)
pytest_plugins = ["slurm_cluster", "dense_fixtures"]


@pytest.fixture(scope="session")
def fmnist_shards(tmp_path_factory) -> dict[str, Path]:
    """600 train / 200 val Fashion-MNIST images as shards (the real Debian files, sharded once per session)."""
    from cmim.data.shard import shard_split

    root = tmp_path_factory.mktemp("fmnist_shards")
    out = {}
    for split, source, n in (("train", "train", 600), ("val", "t10k", 200)):
        shard_split("fashion-mnist", None, "fmnist", split, source, root / split, max_samples=n,
                    shard_max_count=250, log=lambda m: None)
        out[split] = root / split / "manifest.json"
    return out


@pytest.fixture(scope="session")
def fmnist_probe_shards(tmp_path_factory) -> dict[str, Path]:
    """10k train / 5k val Fashion-MNIST images: enough for a linear probe to tell encoders apart."""
    from cmim.data.shard import shard_split

    root = tmp_path_factory.mktemp("fmnist_probe")
    out = {}
    for split, source, n in (("train", "train", 10000), ("val", "t10k", 5000)):
        shard_split("fashion-mnist", None, "fmnist", split, source, root / split, max_samples=n,
                    shard_max_count=5000, log=lambda m: None)
        out[split] = root / split / "manifest.json"
    return out
