"""Deterministic WebDataset sharding of one dataset split (DESIGN sections 2 and 6).

Same inputs -> byte-identical tars: records in the source's sorted order, the first `max_samples`,
then one seeded permutation (a class-sorted ImageNet shard would defeat a shuffle buffer); tar
members with a constant mtime, owner and mode.

Output: out_dir/{split}-%06d.tar and out_dir/manifest.json (format in `shard_split`). A run builds
the whole split in out_dir/.{split}.staging/ and swaps it in only when complete: a failed or killed
run leaves an earlier output (shards + manifest) as it was. The swap removes the old manifest first,
then moves the shards, then the new manifest, so a reader never pairs one run's manifest with the
other's shards (cmim.data.loader checks that, and that no shard changes under a running job); a swap
killed midway is completed by the next run, and a staging folder of a killed run is removed then.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cmim import io
from cmim.data.images import Record, Sample, Skip, build_sample
from cmim.data.readers import Reader
from cmim.data.shard_writer import ShardWriter
from cmim.data.sources import open_reader
from cmim.errors import ShardingError

# Below this many records one process shards faster than a pool: a forkserver pool takes ~0.1 s to its
# first result. Measured on 2 free cores with ImageNet-sized JPEGs (benchmarks/sharding.py): 2 workers
# ran 0.85x one at 250 records, 1.06x at 500, 1.53x at 3,000 (break-even ~330; more cores pay sooner).
POOL_MIN_RECORDS = 500
MANIFEST = "manifest.json"
BAD_FILES = "bad_files.json"              # written next to the manifest when a split fails on bad files
_SHOW = 10                                # bad / converted paths quoted in the log
_SHOW_ERROR = 20                          # bad paths quoted in an error message (all: in bad_files.json)


def shard_split(fmt: str, root: str | Path | None, dataset: str, split: str, source_split: str,
                out_dir: str | Path, *, max_samples: int | None = None, shard_max_count: int = 10000,
                shard_max_bytes: float = 1e9, max_bad_fraction: float = 0.01,
                resize_short_side: int | None = None, seed: int = 0, workers: int | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Write one split as shards + manifest.json and return the manifest.

    Manifest (JSON, sorted keys, nothing that changes between runs but `source_root`):
      dataset, split, format, source_root, source_split, seed, max_samples, resize_short_side,
      num_samples, fields (sorted field names), shards [{file, count, bytes, sha256}],
      classes [{id, name, ...}], skipped [{source, reason}], converted [{source, reason}],
      resized (count), image_size_stats {width, height: {min, max, mean}} of the stored images,
      empty_classes [{id, name}] (classes without a stored sample: `cls` datasets only),
      dropped_annotations [{source, reason}] (annotations of no image; sources.py's docstring),
      degenerate_boxes [{source, reason}] (COCO annotations left out of their image: a zero-area box).
    Sources in `skipped` / `converted` / `dropped_annotations` / `degenerate_boxes` are relative to
    source_root.

    Every record is checked before the split fails on max_bad_fraction (shards stop being written
    once it is passed), so the error and out_dir/bad_files.json list every bad file.
    `workers`: processes that decode and check images (None: one per available core, at most 8;
    the output does not depend on it).
    """
    out_dir = Path(out_dir)
    name = f"{dataset}/{split}"
    reader = open_reader(fmt, root, source_split, resize_short_side=resize_short_side)
    records = reader.records()[:max_samples]
    classes = reader.classes()  # before the long part: a malformed class list fails now, not in hours
    if not records:
        raise ShardingError(f"{name}: no samples found in {reader.location}; check datasets.{dataset}.root "
                            f"and datasets.{dataset}.splits")
    todo = [r for r in records if isinstance(r, Record)]
    todo = [todo[i] for i in np.random.default_rng(seed).permutation(len(todo))]
    bad = _BadSamples(name, dataset, reader, len(records), max_bad_fraction, reader.dropped())
    bad.add(*(r for r in records if isinstance(r, Skip)))
    log(f"[shard] {name}: {len(records)} samples from {reader.location} ({fmt}, split {source_split}) "
        f"-> {out_dir}")

    out_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(name, len(records), log)
    with _exclusive(out_dir, name):
        staging = _fresh_staging(out_dir, split, log)
        try:
            stats, shards = _write_shards(staging, split, todo, reader, bad, workers, shard_max_count,
                                          shard_max_bytes, progress, log)
            if bad.over_limit() or stats.count == 0:
                io.write_json(out_dir / BAD_FILES, bad.report(reader, source_split))
                raise bad.error(out_dir, stats.count)
            manifest = {
                "dataset": dataset, "split": split, "format": fmt, "source_root": str(reader.root.resolve()),
                "source_split": source_split, "seed": seed, "max_samples": max_samples,
                "resize_short_side": resize_short_side, "num_samples": stats.count,
                "fields": sorted(stats.fields), "shards": shards, "classes": classes,
                "skipped": bad.listing(), "converted": stats.converted_listing(), "resized": stats.resized,
                "image_size_stats": stats.image_size_stats(), "empty_classes": stats.empty(classes),
                "dropped_annotations": bad.dropped_listing(),
                "degenerate_boxes": [{"source": d.source, "reason": d.reason} for d in reader.degenerate_boxes()],
            }
            io.write_json(staging / MANIFEST, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(staging, out_dir, split, shards)  # a kill in here is completed by the next run
        (out_dir / BAD_FILES).unlink(missing_ok=True)  # a report of an earlier failed run no longer holds
    _log_summary(log, name, manifest, progress.elapsed())
    return manifest


def _write_shards(staging: Path, split: str, todo: list[Record], reader: Reader, bad: _BadSamples,
                  workers: int | None, max_count: int, max_bytes: float, progress: _Progress,
                  log: Callable[[str], None]) -> tuple[_Stats, list[dict]]:
    """Build every record; write the good samples into staging until the bad ones pass the limit."""
    writer = ShardWriter(staging, split, max_count, max_bytes)
    stats, done = _Stats(), len(bad.items)
    try:
        with contextlib.closing(_built(todo, reader, workers)) as built:  # closing stops the workers
            for item in built:
                if isinstance(item, Skip):
                    bad.add(item)
                elif not bad.over_limit():
                    writer.write(item)
                    stats.add(item)
                if bad.over_limit() and writer.writing():
                    writer.abort()  # the split will fail: free the disk, keep checking to list every bad file
                    log(f"[shard] {bad.name}: more than max_bad_fraction={bad.max_fraction} of the samples are "
                        f"bad; writing stopped, checking the rest to list every bad file")
                done += 1
                progress.update(done, len(bad.items))
        return stats, writer.close()
    except BaseException:
        writer.abort()
        raise


# ----------------------------------------------------------------------------- building samples


def _built(records: list[Record], reader: Reader, workers: int | None) -> Iterator[Sample | Skip]:
    """build_sample over the records, in their order (worker processes keep the order: imap)."""
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)))
    if workers <= 1 or len(records) < POOL_MIN_RECORDS:
        yield from map(reader.build, records)
        return
    fn = functools.partial(build_sample, **reader.build_kwargs())
    # forkserver: never fork a process that may hold threads (torch, BLAS)
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        yield from pool.imap(fn, records, chunksize=64)


class _BadSamples:
    """Skipped records (and dropped annotations) of a split, and the max_bad_fraction policy."""

    def __init__(self, name: str, dataset: str, reader: Reader, total: int, max_fraction: float,
                 dropped: list[Skip]) -> None:
        self.name, self.dataset, self.reader = name, dataset, reader
        self.total, self.max_fraction = total, max_fraction
        self.items: list[Skip] = []
        self.dropped = dropped

    def add(self, *items: Skip) -> None:
        self.items += items

    def over_limit(self) -> bool:
        return len(self.items) > self.max_fraction * self.total

    def listing(self) -> list[dict]:
        return [{"source": s.source, "reason": s.reason} for s in sorted(self.items, key=lambda s: s.source)]

    def dropped_listing(self) -> list[dict]:
        return [{"source": s.source, "reason": s.reason} for s in self.dropped]

    def report(self, reader: Reader, source_split: str) -> dict:
        """bad_files.json: every bad file of a failed split, relative to source_root."""
        return {"dataset": self.dataset, "split": self.name.split("/", 1)[1], "source_root": str(reader.root.resolve()),
                "source_split": source_split, "total": self.total, "max_bad_fraction": self.max_fraction,
                "bad": self.listing(), "dropped_annotations": self.dropped_listing()}

    def error(self, out_dir: Path, good: int) -> ShardingError:
        """One complete first line (what, where, what to do), then the first bad files, one a line."""
        k, report = len(self.items), out_dir / BAD_FILES
        kept = f"; the earlier output in {out_dir} is unchanged" if (out_dir / MANIFEST).exists() else ""
        if good == 0 and not self.over_limit():
            first = (f"{self.name}: no readable samples in {self.reader.location} ({k} skipped){kept}; "
                     f"every file is listed in {report}")
        else:
            first = (f"{self.name}: {k} of {self.total} samples are bad ({k / self.total:.2%}, more than "
                     f"max_bad_fraction={self.max_fraction}); no shards written{kept}. Fix or remove the files, "
                     f"or raise datasets.{self.dataset}.max_bad_fraction to skip them; all {k} are listed in "
                     f"{report}")
        lines = [f"  {s['source']}: {_short(s['reason'])}" for s in self.listing()[:_SHOW_ERROR]]
        if k > _SHOW_ERROR:
            lines.append(f"  ... and {k - _SHOW_ERROR} more (see {report})")
        return ShardingError("\n".join([first, f"Under {self.reader.root}:", *lines]))


def _short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class _Stats:
    """What the manifest says about the good samples."""

    def __init__(self) -> None:
        self.count = self.resized = 0
        self.fields: set[str] = set()
        self.converted: list[tuple[str, str]] = []
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.labels: set[int] = set()

    def add(self, sample: Sample) -> None:
        self.count += 1
        if "cls" in sample.fields:
            self.labels.add(int(sample.fields["cls"]))
        self.resized += sample.resized
        self.fields.update(sample.fields)
        if sample.converted:
            self.converted.append((sample.source, sample.converted))
        self.widths.append(sample.size[0])
        self.heights.append(sample.size[1])

    def converted_listing(self) -> list[dict]:
        return [{"source": s, "reason": r} for s, r in sorted(self.converted)]

    def empty(self, classes: list[dict]) -> list[dict]:
        """Classes of a `cls` dataset with no stored sample (an empty class folder, or all its files bad)."""
        if "cls" not in self.fields:
            return []
        return [{"id": c["id"], "name": c["name"]} for c in classes if c["id"] not in self.labels]

    def image_size_stats(self) -> dict:
        def stats(v: list[int]) -> dict:
            return {"min": int(min(v)), "max": int(max(v)), "mean": round(float(np.mean(v)), 3)}
        return {"width": stats(self.widths), "height": stats(self.heights)}


def _remove_stale(out_dir: Path, split: str, keep: set[str]) -> None:
    """Shards of an earlier run that this manifest does not list, and temporary files of killed runs."""
    pattern = re.compile(rf"\.?{re.escape(split)}-\d{{6}}\.tar(\.\d+\.tmp)?|\.(manifest|bad_files)\.json\..+\.tmp")
    for path in out_dir.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- swapping a split in


@contextlib.contextmanager
def _exclusive(out_dir: Path, name: str) -> Iterator[None]:
    """One sharding run per output folder at a time: an flock on the folder, released when the process
    ends however it ends. Best effort: where the filesystem has no flock (some NFS / Lustre mounts),
    runs are not serialised (Snakemake's own lock still keeps two runs of one rule apart)."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ShardingError(f"{name}: another sharding run is writing {out_dir}; wait for it to end "
                                f"(or stop it) and run again") from None
        except OSError:
            pass  # no flock here
        yield
    finally:
        os.close(fd)  # releases the lock


def _fresh_staging(out_dir: Path, split: str, log: Callable[[str], None]) -> Path:
    """An empty out_dir/.{split}.staging; a swap that a killed run left half done is completed first."""
    staging = out_dir / f".{split}.staging"
    if (staging / MANIFEST).exists() and not (out_dir / MANIFEST).exists():
        log(f"[shard] {out_dir}: completing the swap of a run that was interrupted while swapping its "
            f"complete output in")
        _publish(staging, out_dir, split, json.loads((staging / MANIFEST).read_text())["shards"])
    elif staging.exists():
        log(f"[shard] {out_dir}: removing {staging.name}, left by a run that was killed")
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _publish(staging: Path, out_dir: Path, split: str, shards: list[dict]) -> None:
    """Swap the complete output in staging in. Order: old manifest out (a reader now finds no manifest,
    never a mix), shards in, stale shards out, new manifest in. Idempotent: a killed swap is redone."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for shard in shards:
        if (staging / shard["file"]).exists():  # a resumed swap finds some shards already moved
            os.replace(staging / shard["file"], out_dir / shard["file"])
    _remove_stale(out_dir, split, keep={s["file"] for s in shards})
    os.replace(staging / MANIFEST, out_dir / MANIFEST)
    _fsync_dir(out_dir)
    shutil.rmtree(staging)


def _fsync_dir(path: Path) -> None:
    """Make the renames in `path` durable (a crash right after must not bring the old names back)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- progress


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Progress:
    """A line about every 5% of the split: count, rate, ETA, skipped so far."""

    def __init__(self, name: str, total: int, log: Callable[[str], None]) -> None:
        self.name, self.total, self.log = name, total, log
        self.every = max(1, total // 20)
        self.started = time.perf_counter()
        self.next = self.every

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, done: int, skipped: int) -> None:
        if done < self.next and done < self.total:
            return
        self.next = done + self.every
        elapsed = self.elapsed()
        rate = done / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - done) / rate if rate > 0 else 0.0
        self.log(f"[shard] {self.name}: {done}/{self.total} ({100 * done / self.total:.0f}%) "
                 f"{rate:.0f} samples/s, ETA {_hms(eta)}, {skipped} skipped")


def _log_summary(log: Callable[[str], None], name: str, m: dict, elapsed: float) -> None:
    size = sum(s["bytes"] for s in m["shards"])
    rate = m["num_samples"] / max(elapsed, 1e-9)
    for c in m["empty_classes"]:
        log(f"[shard] {name}: WARNING: class {c['name']!r} (id {c['id']}) has no samples in this split (an empty "
            f"folder, or all its files were skipped); it keeps its id so labels match the other splits")
    if m["dropped_annotations"]:
        log(f"[shard] {name}: WARNING: {len(m['dropped_annotations'])} annotation(s) belong to no image and were "
            f"dropped (listed in the manifest's dropped_annotations)")
    if m["degenerate_boxes"]:
        log(f"[shard] {name}: WARNING: {len(m['degenerate_boxes'])} annotation(s) have a box of zero area and were "
            f"left out of their images' targets (listed in the manifest's degenerate_boxes)")
    log(f"[shard] {name}: done, {m['num_samples']} samples in {len(m['shards'])} shard(s), "
        f"{size / 1e6:.1f} MB, {elapsed:.1f}s ({rate:.0f} samples/s); {len(m['skipped'])} skipped, "
        f"{len(m['converted'])} converted, {m['resized']} resized")
    for what in ("skipped", "converted", "dropped_annotations", "degenerate_boxes"):
        for entry in m[what][:_SHOW]:
            log(f"[shard]   {what} {entry['source']}: {entry['reason']}")
        if len(m[what]) > _SHOW:
            log(f"[shard]   ... and {len(m[what]) - _SHOW} more {what} (see manifest.json)")
