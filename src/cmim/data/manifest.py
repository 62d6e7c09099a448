"""Shard manifests: read one consistently, check its shards, hash them, and read them checked.

Checks against the manifest: `read_manifest` (cheap: every shard there at its size), `verify_shards`
(every shard's sha256: once per job, before training), and while reading (`checked_tar_samples`),
every shard read to its end holds exactly its manifest count (one that runs past it fails at once:
in the resampled training stream too, where the last shard of an epoch is usually cut off and so is
not checked for running out early) and is the file the job found when it read the manifest (a
re-shard under a running job fails instead of mixing two runs' shards).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from cmim import io
from cmim.errors import DataError

VERIFY_PROGRESS_BYTES = 1e9   # splits at least this big get a progress line about every 5% of their bytes
_HASH_CHUNK = 1 << 20         # bytes read per call while hashing (a 1 GB shard never sits in memory)


def read_manifest(path: str | Path) -> dict:
    """Load a shard manifest and check its shards exist with the recorded sizes (cheap, no hashing)."""
    return _snapshot(path)[0]


def read_shards(manifest_path: str | Path) -> tuple[dict, dict]:
    """(manifest, shards) for a loader: `list(shards)` are the shard urls, and `checked_tar_samples(shards)`
    is the stage that reads them (in place of `wds.tarfile_to_samples`), checked against the manifest."""
    return _snapshot(manifest_path)


def checked_tar_samples(shards: dict):
    """Pipeline stage: shard urls -> samples, like `wds.tarfile_to_samples(handler=...)`, failing with a
    DataError naming the shard when one holds other than its manifest count or changed under the job."""
    return wds.pipelinefilter(_shard_samples)(shards)


@dataclass(frozen=True)
class _Shard:
    """One shard as the manifest lists it and as the job found it when it read the manifest."""
    url: str
    file: str
    count: int
    bytes: int
    sha256: str
    mtime_ns: int                 # a change later means the file was replaced under the running job


def _snapshot(path: str | Path, tries: int = 3) -> tuple[dict, dict[str, _Shard]]:
    """The manifest and its shards (url -> _Shard), read consistently: if the manifest is replaced while
    its shards are checked (a re-shard swapping its output in), read again."""
    path = Path(path)
    for attempt in range(tries):
        before = _identity(path)
        if before is None and not _swap_in_progress(path.parent):
            break
        try:
            manifest = _parse_manifest(path)
            shards = _check_shards(path, manifest)
        except (FileNotFoundError, DataError):  # a fault, or a swap replacing the split under us: which?
            if before is not None and _identity(path) == before:
                raise
            shards = None
        if shards is not None and _identity(path) == before:
            return manifest, shards
        time.sleep(0.2 * (attempt + 1))
    if _identity(path) is None:
        raise DataError(f"shard manifest {path} not found; run the shard step first (snakemake {path})")
    raise DataError(f"shard manifest {path} changed while it was being read, {tries} times: the split is being "
                    f"re-sharded right now; wait for that to finish and start this job again")


def _swap_in_progress(folder: Path) -> bool:
    """cmim.data.shard stages a split in a hidden `.<split>.staging` folder next to its manifest."""
    return folder.is_dir() and any(p.name.endswith(".staging") and p.is_dir() for p in folder.iterdir())


def _identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _parse_manifest(path: Path) -> dict:
    redo = f"delete {path.parent} and re-run sharding"
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, or bytes that are not text
        raise DataError(f"shard manifest {path} is not valid JSON ({e}); {redo}") from None
    problems = _manifest_problems(manifest)
    if problems:
        raise DataError(f"shard manifest {path} is malformed: {'; '.join(problems[:5])}; {redo}")
    if manifest["num_samples"] < 1 or not manifest["shards"]:
        raise DataError(f"{path}: the split has no samples; check the dataset's root and splits in the config")
    return manifest


def _manifest_problems(m) -> list[str]:
    if not isinstance(m, dict):
        return ["not a JSON object"]
    if not isinstance(m.get("num_samples"), int) or not isinstance(m.get("shards"), list):
        return ["needs an integer num_samples and a list of shards"]
    out = []
    for i, s in enumerate(m["shards"]):
        if not (isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("count"), int)
                and isinstance(s.get("bytes"), int)):
            out.append(f"shards[{i}] needs a file name and integer count and bytes, got {str(s)[:80]}")
    if not out and sum(s["count"] for s in m["shards"]) != m["num_samples"]:
        out.append(f"its shard counts add up to {sum(s['count'] for s in m['shards'])}, "
                   f"not num_samples={m['num_samples']}")
    return out


def _check_shards(path: Path, manifest: dict) -> dict[str, _Shard]:
    out = {}
    for url, shard in zip(shard_urls(path, manifest), manifest["shards"]):
        try:
            st = os.stat(url)
        except FileNotFoundError:
            raise DataError(f"shard {url} listed in {path} is missing; delete {path.parent} and re-run "
                            f"sharding") from None
        if st.st_size != shard["bytes"]:
            raise DataError(f"shard {url} has {st.st_size} bytes, the manifest says {shard['bytes']}: "
                            f"it is truncated or was replaced; delete {path.parent} and re-run sharding")
        out[url] = _Shard(url, shard["file"], shard["count"], shard["bytes"], str(shard.get("sha256") or ""),
                          st.st_mtime_ns)
    return out


@contextlib.contextmanager
def _open_shard(shard: _Shard) -> Iterator:
    """The shard's file, if it is still the one the job found when it read the manifest."""
    try:
        f = open(shard.url, "rb")
    except OSError as e:
        raise DataError(f"shard {shard.url} cannot be opened ({e.strerror}); if its folder was deleted or "
                        f"re-sharded, start the job again") from None
    with f:
        st = os.fstat(f.fileno())
        if (st.st_size, st.st_mtime_ns) != (shard.bytes, shard.mtime_ns):
            raise DataError(f"shard {shard.url} changed after this job read {Path(shard.url).parent}/manifest.json "
                            f"(re-sharded while the job ran?); restart the job so that it reads the new manifest")
        yield f


# ----------------------------------------------------------------------------- sha256 verification


VERIFIED = ".verified.json"   # per split: the shards whose sha256 a job checked, and the file as it was then


def _file_key(shard: _Shard) -> list | None:
    """What identifies a shard file as it is: any write to it changes its mtime and ctime (ctime cannot be
    set back by a user), a copy or a replacement its inode."""
    try:
        st = os.stat(shard.url)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _verified(folder: Path) -> dict:
    try:
        stamp = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return stamp.get("shards", {}) if isinstance(stamp, dict) else {}


def _record(folder: Path, entries: dict, log: Callable[[str], None]) -> None:
    try:
        io.write_json(folder / VERIFIED, {"shards": entries})
    except OSError as e:
        log(f"[verify] {folder}: could not record the verified shards ({e}); the next job hashes them again")


def verify_shards(manifest_path: str | Path, log: Callable[[str], None] = print, *,
                  workers: int | None = None, recheck: bool = False) -> None:
    """Check every shard of a split against the manifest's sha256 (DataError at the first mismatch,
    naming the shard, both hashes and what to do), hashing only what was not verified before.

    Run before each training / evaluation job: the size check of `read_manifest` cannot see a shard
    damaged in place. A shard is hashed once: a job that verified it records it in the split's
    `.verified.json` with the file's size, mtime, ctime, inode and device, and later jobs skip it
    while all five are unchanged. A shard damaged in place by a write (a sync tool, a copy over it, a
    disk repair) changes its mtime and ctime, so the next job hashes it again and fails before it
    trains; a shard replaced under a running job fails that job at its next read (`_open_shard`).
    `recheck` hashes everything. Cost of a hash, measured on one SHA-NI x86 core: ~1.0 GB/s from the
    page cache (~17 core-minutes per TB); `workers` threads (None: one per core, at most 8) hash
    shards in parallel (hashlib releases the GIL). Splits of 1 GB or more log progress every ~5%.
    """
    manifest_path = Path(manifest_path)
    _, shards = _snapshot(manifest_path)
    folder = manifest_path.parent
    for shard in shards.values():
        if len(shard.sha256) != 64:
            raise DataError(f"shard {shard.url}: {manifest_path} records no sha256 for it (written by an old "
                            f"version?), so it cannot be verified; delete {folder} and re-run sharding")
    stamp = {} if recheck else _verified(folder)
    keys = {url: _file_key(s) for url, s in shards.items()}
    known = {url for url, s in shards.items()
             if stamp.get(s.file) == {"key": keys[url], "sha256": s.sha256}}
    todo = {url: s for url, s in shards.items() if url not in known}
    progress = _HashProgress(folder, todo, log, skipped=len(known))
    workers = workers or min(8, len(os.sched_getaffinity(0)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256")  # hashlib drops the GIL
    try:
        for shard, found in zip(todo.values(), pool.map(_sha256, todo.values())):
            if found != shard.sha256:
                raise DataError(
                    f"shard {shard.url} is damaged: its sha256 is {found}, {manifest_path} says {shard.sha256}; "
                    f"delete {folder} and re-run sharding (the shard changed after it was written: a disk, "
                    f"copy or sync fault)")
            progress.update(shard)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # at a mismatch: do not hash the rest
    if todo:
        entries = {s.file: {"key": keys[url], "sha256": s.sha256} for url, s in shards.items()}
        _record(folder, entries, log)
    progress.done()


def _sha256(shard: _Shard) -> str:
    h, buf = hashlib.sha256(), bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with _open_shard(shard) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class _HashProgress:
    def __init__(self, folder: Path, shards: dict[str, _Shard], log: Callable[[str], None], skipped: int = 0) -> None:
        self.folder, self.log, self.skipped = folder, log, skipped
        self.total_shards, self.total = len(shards), sum(s.bytes for s in shards.values())
        self.shards = self.bytes = 0
        self.every = self.total / 20 if self.total >= VERIFY_PROGRESS_BYTES else float("inf")
        self.next = self.every
        self.started = time.perf_counter()

    def rate(self) -> float:
        return self.bytes / max(time.perf_counter() - self.started, 1e-9)

    def update(self, shard: _Shard) -> None:
        self.shards, self.bytes = self.shards + 1, self.bytes + shard.bytes
        if self.bytes < self.next:
            return
        self.next = self.bytes + self.every
        eta = (self.total - self.bytes) / max(self.rate(), 1e-9)
        self.log(f"[verify] {self.folder}: {self.shards}/{self.total_shards} shards, {self.bytes / 1e9:.2f}/"
                 f"{self.total / 1e9:.2f} GB ({100 * self.bytes / max(self.total, 1):.0f}%), "
                 f"{self.rate() / 1e6:.0f} MB/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}")

    def done(self) -> None:
        before = f"; {self.skipped} verified before and unchanged" if self.skipped else ""
        if not self.total_shards:
            self.log(f"[verify] {self.folder}: nothing to hash{before} (checked in "
                     f"{time.perf_counter() - self.started:.3f}s)")
            return
        self.log(f"[verify] {self.folder}: {self.total_shards} shards, {self.total / 1e9:.2f} GB, sha256 ok in "
                 f"{time.perf_counter() - self.started:.1f}s ({self.rate() / 1e6:.0f} MB/s){before}")


def shard_urls(manifest_path: str | Path, manifest: dict) -> list[str]:
    base = Path(manifest_path).parent.resolve()
    return [str(base / s["file"]) for s in manifest["shards"]]


def class_names(manifest: dict) -> list[str]:
    return [c["name"] for c in sorted(manifest.get("classes", []), key=lambda c: c["id"])]



# ----------------------------------------------------------------------------- reading shards


def _raise_with_shard(exn: Exception) -> bool:
    url = getattr(exn, "url", None) or (exn.args[-1] if exn.args else "?")
    raise DataError(f"reading shard {url} failed: {exn!r}; the shard may be corrupt: delete its folder "
                    f"and re-run sharding") from exn


def _shard_samples(src: Iterator[dict], shards: dict[str, _Shard]) -> Iterator[dict]:
    """webdataset's tarfile_to_samples, one shard at a time, each checked against the manifest."""
    for item in src:
        yield from _samples_of(shards[item["url"]])


def _samples_of(shard: _Shard) -> Iterator[dict]:
    """A shard's samples; DataError as soon as it holds more than its manifest count, or at its end
    when it held fewer (a shard the consumer stops reading early is not judged)."""
    n, redo = 0, f"delete {Path(shard.url).parent} and re-run sharding"
    with _open_shard(shard) as stream:
        files = wds.tariterators.tar_file_expander([{"url": shard.url, "stream": stream}], handler=_raise_with_shard)
        for sample in wds.tariterators.group_by_keys(files, handler=_raise_with_shard):
            n += 1
            if n > shard.count:
                raise DataError(f"shard {shard.url} holds more than the {shard.count} samples its manifest lists: "
                                f"it was damaged or replaced; {redo}")
            yield sample
    if n < shard.count:
        raise DataError(f"shard {shard.url} holds {n} samples, its manifest lists {shard.count}: it was damaged "
                        f"or replaced; {redo}")
