"""Run `python -m cmim ...` with a fault injected into one file write, for the fault-injection suite.

    python tests/fault_inject.py '<spec json>' pretrain --run-config ... --out ...

The spec names one write by a substring of its target file name and says what goes wrong there:

- {"die": "inside", "write": "torch" | "bytes" | "copy" | "append", "match": "step-000000006.pt", "nth": 1}
  the process writes half of that file's bytes, then kills itself with SIGKILL (a kill -9 or a
  power cut in the middle of the write: nothing of Python's clean-up runs, temp files stay);
- {"die": "after", "match": ...}: the write completes and is renamed into place, then SIGKILL
  (a kill between two writes); {"die": "before", "write": ..., "match": ...}: SIGKILL just before
  that write begins;
- {"fill": "before", "write": ..., "match": ...}: the filesystem holding the target is filled to the
  last byte (a filler file next to the run folder's root, `spec["filler"]`) just before that write,
  which then meets a real ENOSPC from the kernel (a disk that fills while the job runs).

Writes are caught where every cmim version makes them: `torch.save` (resume states, encoder
exports), `Path.write_bytes` (json / yaml / text via cmim.io), `shutil.copyfile` (metrics.jsonl copied
into place) and `cmim.train.progress.append_jsonl` (a metrics row), so the same spec exercises the
code's own atomic-write and resume logic, old or new.
"""

from __future__ import annotations

import io as _io
import json
import os
import pathlib
import shutil
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def fill_filesystem(path: str | os.PathLike) -> None:
    """Write `path` until the filesystem it is on has not one byte left (big chunks, then smaller)."""
    chunk = 1 << 20
    with open(path, "ab", buffering=0) as f:
        while chunk:
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                chunk //= 2
        os.fsync(f.fileno())


class Injector:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.seen = 0

    def hit(self, kind: str, target) -> bool:
        """Is this write (of `kind`, to `target`) the one the spec names?"""
        spec = self.spec
        if spec.get("write", kind) != kind or spec["match"] not in os.path.basename(str(target)):
            return False
        self.seen += 1
        return self.seen == spec.get("nth", 1)

    def before(self, kind: str, target) -> bool:
        """Called before a data write; True = write half and die."""
        if not self.hit(kind, target):
            return False
        if "fill" in self.spec:
            fill_filesystem(self.spec["filler"])
            return False
        if self.spec.get("die") == "before":
            _die()
        return self.spec.get("die") == "inside"

    def install(self) -> None:
        import torch

        import cmim.train.progress as progress

        real_save, real_write_bytes, real_copy, real_replace = torch.save, pathlib.Path.write_bytes, \
            shutil.copyfile, os.replace
        real_append = progress.append_jsonl
        inj = self

        def save(obj, f, *args, **kwargs):
            if inj.before("torch", getattr(f, "name", f)):  # a path or an open file
                buf = _io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                with open(getattr(f, "name", f), "wb") as out:
                    out.write(data[: len(data) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                _die()
            return real_save(obj, f, *args, **kwargs)

        def write_bytes(self, data):
            if inj.before("bytes", self):
                real_write_bytes(self, bytes(data)[: len(data) // 2])
                _die()
            return real_write_bytes(self, data)

        def copyfile(src, dst, *args, **kwargs):
            if inj.before("copy", dst):
                data = pathlib.Path(src).read_bytes()
                real_write_bytes(pathlib.Path(dst), data[: len(data) // 2])
                _die()
            return real_copy(src, dst, *args, **kwargs)

        def append_jsonl(path, row, *args, **kwargs):
            if inj.before("append", path):
                line = (json.dumps(row, sort_keys=True) + "\n").encode()
                with open(path, "ab") as f:
                    f.write(line[: len(line) // 2])
                _die()
            return real_append(path, row, *args, **kwargs)

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if inj.spec.get("die") == "after" and inj.hit(inj.spec.get("write", "any"), dst):
                _die()

        torch.save = save
        pathlib.Path.write_bytes = write_bytes
        shutil.copyfile = copyfile
        progress.append_jsonl = append_jsonl
        os.replace = replace


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec.get("die") == "after":
        spec.setdefault("write", "any")
    Injector(spec).install()
    from cmim.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
