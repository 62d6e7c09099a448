"""The base of every source reader, and the listing helpers the readers share.

A reader lists one split of a source cheaply and in a deterministic sorted order (`records()`), and
builds each record into a Sample or a Skip (cmim.data.images.build_sample).
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cmim.data.images import Record, Sample, Skip, build_sample
from cmim.errors import SourceError


class SampleKeys:
    """Webdataset keys: [A-Za-z0-9_-] only (the first dot starts the field name), unique in a split."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, name: str) -> str:
        key = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
        unique, n = key, 1
        while unique in self.seen:  # e.g. a.jpg and a.png in one folder; deterministic in sorted order
            n += 1
            unique = f"{key}-{n}"
        self.seen.add(unique)
        return unique


def list_files(folder: Path) -> list[str]:
    """Every non-hidden file under `folder` (recursively, following links), as sorted relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_unlistable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        out += [f if rel == "." else f"{rel}/{f}" for f in filenames if not f.startswith(".")]
    return sorted(out)


def _unlistable(e: OSError) -> None:
    """os.walk skips folders it cannot list, silently; their files would vanish from the split unlisted."""
    raise SourceError(f"cannot list {e.filename}: {e.strerror}; fix its permissions or remove it") from e


def path_stem(rel: str) -> str:
    """The relative path without the file's extension: 'n014/n014_10026.JPEG' -> 'n014/n014_10026'."""
    head, _, name = rel.rpartition("/")
    name = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{name}" if head else name


class Reader(abc.ABC):
    """One split of one source. `records()` lists it (sorted, cheap), iterating yields Sample | Skip."""

    fmt = ""

    def __init__(self, root: str | Path, split: str, resize_short_side: int | None = None) -> None:
        self.root = Path(root)            # Record / Sample / Skip sources are relative to it
        self.split = split                # the source's split name (training, train2017, t10k, ...)
        self.location = self.root         # the folder named in messages (empty split, missing data)
        self.resize_short_side = resize_short_side
        self._build_kwargs: dict | None = None

    @abc.abstractmethod
    def records(self) -> list[Record | Skip]:
        """Every item of the split in a stable order, unreadable ones as Skip."""

    @abc.abstractmethod
    def classes(self) -> list[dict]:
        """[{id, name, ...}] in id order; ids are the values stored in `cls` / `seg.png` / COCO json."""

    def dropped(self) -> list[Skip]:
        """Annotations that belong to no sample of the split (listed, not stored; see the module docstring)."""
        return []

    def degenerate_boxes(self) -> list[Skip]:
        """Annotations left out of their sample because their box has no area (COCO; cmim.data.sources)."""
        return []

    def build_kwargs(self) -> dict:
        """build_sample's keyword arguments for this split (picklable: worker processes get them)."""
        return {"root": self.root, "resize_short_side": self.resize_short_side}

    def build(self, record: Record) -> Sample | Skip:
        if self._build_kwargs is None:  # once: an ADE20K reader parses objectInfo150.txt for it
            self._build_kwargs = self.build_kwargs()
        return build_sample(record, **self._build_kwargs)

    def __iter__(self) -> Iterator[Sample | Skip]:
        for r in self.records():
            yield r if isinstance(r, Skip) else self.build(r)
