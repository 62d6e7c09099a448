"""Writing one split's samples as WebDataset tar shards: deterministic bytes, sizes known before a
sample is written, every shard hashed as it is written and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import webdataset as wds

from cmim.data.images import Sample

_TAR_BLOCK, _TAR_RECORD = 512, 20 * 512   # tarfile's block and record sizes (USTAR)


class HashingFile:
    """A write-only file wrapper that counts and hashes what passes through (no second read of the shard)."""

    def __init__(self, f) -> None:
        self.f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.f.write(data)


def _tar_bytes(key: str, fields: dict[str, bytes]) -> int:
    """Bytes a sample adds to a tar: a header block per member plus its data padded to whole blocks
    (member names over 100 characters take a PAX header and its record: two more blocks)."""
    return sum(_TAR_BLOCK * (1 + 2 * (len(key) + 1 + len(k) > 100)) + -(-len(v) // _TAR_BLOCK) * _TAR_BLOCK
               for k, v in fields.items())


def _tar_file_bytes(member_bytes: int) -> int:
    """Size of a finished tar: members, two end blocks, padded to a whole record."""
    return -(-(member_bytes + 2 * _TAR_BLOCK) // _TAR_RECORD) * _TAR_RECORD


class ShardWriter:
    """{split}-%06d.tar shards of at most max_count samples and max_bytes bytes (a larger single sample
    gets a shard of its own); each is written under a hidden temporary name and renamed when complete."""

    def __init__(self, out_dir: Path, split: str, max_count: int, max_bytes: float) -> None:
        self.out_dir, self.split = out_dir, split
        self.max_count, self.max_bytes = max_count, max_bytes
        self.done: list[dict] = []
        self._tar = None

    def write(self, sample: Sample) -> None:
        size = _tar_bytes(sample.key, sample.fields)
        if self._tar is not None and (self._count >= self.max_count
                                      or _tar_file_bytes(self._size + size) > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._open()
        self._tar.write({"__key__": sample.key, **sample.fields})
        self._count += 1
        self._size += size

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._finish()
        return self.done

    def writing(self) -> bool:
        return self._tar is not None or bool(self.done)

    def abort(self) -> None:
        """Remove the shard being written and every shard this writer completed."""
        if self._tar is not None:
            with contextlib.suppress(Exception):  # the tar stream flushes into the file it is removed with
                self._tar.close()
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None
        for shard in self.done:
            (self.out_dir / shard["file"]).unlink(missing_ok=True)
        self.done = []

    def _open(self) -> None:
        self._name = f"{self.split}-{len(self.done):06d}.tar"
        self._tmp = self.out_dir / f".{self._name}.{os.getpid()}.tmp"
        self._file = open(self._tmp, "wb")  # closed in _finish / abort
        self._hashing = HashingFile(self._file)
        # constant mtime, owner and mode (TarWriter's defaults): the same samples give the same bytes
        self._tar = wds.TarWriter(self._hashing, encoder=False, mtime=0)
        self._count = self._size = 0

    def _finish(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._tar = None
        os.replace(self._tmp, self.out_dir / self._name)
        self.done.append({"file": self._name, "count": self._count, "bytes": self._hashing.bytes,
                          "sha256": self._hashing.sha256.hexdigest()})
