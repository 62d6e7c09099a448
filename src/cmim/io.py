"""Atomic file output: a file appears under its final name complete, or not at all.

Why: a killed job (preemption, kill -9, a full disk) must never leave a half-written checkpoint,
shard or result that a later run would trust. Everything is written to a temporary name in the
same directory, flushed to disk, then renamed (rename is atomic within one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmim.errors import UnsafeFile


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise named_write_error(e, path) from None
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like any file
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            # an error about another file (a source being read) stays as it is; one about the temp file
            # (shutil.copyfile names it as filename2) or about no file at all is the error of writing `path`
            names = {Path(f) for f in (e.filename, e.filename2) if f}
            if names and not names & {tmp, path}:
                raise
            raise named_write_error(e, path) from e
    finally:
        if tmp.exists():
            tmp.unlink()


def named_write_error(e: OSError, path: Path) -> OSError:
    """The error of writing `path` (not of its hidden temporary file), with what to do."""
    hint = {errno.ENOSPC: "the disk is full: free space and run again",
            errno.EACCES: f"no permission to write in {path.parent}: fix its permissions or write elsewhere",
            errno.EROFS: f"{path.parent} is on a read-only filesystem"}.get(e.errno, e.strerror or str(e))
    return OSError(e.errno, f"cannot write {path}: {hint}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    """Sorted keys and a trailing newline: the same object always gives the same bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and re-run the step that writes it") from e


def torch_save(obj: Any, path: str | Path) -> None:
    """torch.save, atomically. Through a Python file so that a failed write (a full disk, a quota)
    surfaces as the OSError it is: torch's own zip writer turns it into a bare RuntimeError
    ("[enforce fail at inline_container.cc] ... unexpected pos") that names neither file nor cause."""
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as e:
            cause = e.__context__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror) from e
            if "inline_container" in str(e):
                raise OSError(errno.EIO, f"torch.save could not write the file ({e})") from e
            raise


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# What torch's weights-only unpickler says when a file asks for more than data: a global (class or
# function) it does not allow, a call of one, or an object of a class it may not build. Any other
# unpickling error (an unknown opcode, a cut-off stream) is a damaged file, not a refused one.
_ASKED = re.compile(r"GLOBAL (?P<g>[\w.]+)|unrecognized function (?P<f>[^\n]+?)(?: which belongs|\n|$)"
                    r"|(?:Can only build|Can only create new object).*?but got (?P<c>[^\n]+)")


def unreadable_reason(e: Exception) -> str:
    """Why torch could not read a file, in one line: torch's weights-only errors wrap the reason in a
    paragraph of advice (which says to load with weights_only=False: never, for a file cmim did not
    write), and its zip reader adds a second sentence about miniz."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first.split('. ')[0][:160] or 'the file ended early'}"


def torch_load(path: str | Path, *, allow: tuple = (), what: str = "file", advice: str | None = None) -> Any:
    """torch.load with `weights_only=True`: tensors, containers, numbers and strings, plus exactly the
    `allow`ed classes and functions (cmim.train.checkpoint allows numpy's RNG state in resume states).
    A file whose unpickling would call or build anything else (a pickle's `__reduce__` can run any
    code) is refused before it runs: `UnsafeFile` names the file, the global it asked for and what to
    do (`advice`, else: re-save its tensors). A damaged file raises torch's own error, which the
    caller turns into "cannot be read": refused and damaged are different problems. Every file cmim
    reads with torch goes through here: resume states, checkpoints, features, reconstructions."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _ASKED.search(str(e))
        if found is None:
            raise
        asked = next(g for g in found.groups() if g).strip()
        advice = advice or ("cmim loads only weights from files it did not write; re-save the file's tensors "
                            "(torch.save(state_dict)) where you trust it, and pass that")
        error = UnsafeFile(f"{path}: refused to load this {what}: unpickling it would call {asked}, which is not "
                           f"plain data or tensors (a pickle can run any code); {advice}")
        error.refused = asked   # the global the file asked for (cmim.checkpoints tells known ones apart)
        raise error from None
