"""Fashion-MNIST from the four IDX .gz files of the Debian package `dataset-fashion-mnist`.

Why Debian: no download at run time. `scripts/setup.sh` installs the package (root) or unpacks
the .deb into data/fashion-mnist (no root); `find_root` looks in both and in $CMIM_FASHION_MNIST.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = {"train": "train", "t10k": "t10k", "test": "t10k"}
_UNPACKED = "data/fashion-mnist/usr/share/datasets/fashion-mnist"  # where setup.sh unpacks the .deb without root
_CHECKOUT = Path(__file__).resolve().parents[3]  # the project checkout, for an editable install
SEARCH_PATH = ("/usr/share/datasets/fashion-mnist", _UNPACKED, str(_CHECKOUT / _UNPACKED))
_FILES = ("{split}-images-idx3-ubyte.gz", "{split}-labels-idx1-ubyte.gz")


def find_root(root: str | Path | None = None) -> Path:
    """The folder holding the IDX files: `root` if given, else $CMIM_FASHION_MNIST, else SEARCH_PATH."""
    candidates = [root] if root else [os.environ.get("CMIM_FASHION_MNIST"), *SEARCH_PATH]
    for c in candidates:
        if c and (Path(c) / _FILES[0].format(split="train")).exists():
            return Path(c)
    tried = [str(c) for c in candidates if c]
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found (looked in {tried}). Install them with "
        "`apt-get install dataset-fashion-mnist` (root) or run scripts/setup.sh, which unpacks the "
        "Debian package into data/fashion-mnist; or set datasets.<name>.root / $CMIM_FASHION_MNIST.")


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    header = 4 + 4 * dims
    got_magic, *shape = struct.unpack(f">I{dims}I", data[:header])
    if got_magic != magic:
        raise ValueError(f"{path}: not an IDX file with magic {magic:#x} (got {got_magic:#x})")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: truncated or padded IDX file ({len(data)} bytes, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load(root: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of split 'train' or 't10k' (alias 'test')."""
    if split not in SPLITS:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(SPLITS)}, got {split!r}")
    base = find_root(root)
    images_file, labels_file = (base / f.format(split=SPLITS[split]) for f in _FILES)
    images = _read_idx(images_file, 0x803, 3)
    labels = _read_idx(labels_file, 0x801, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{base}: {len(images)} images but {len(labels)} labels in split {split}")
    return images, labels
