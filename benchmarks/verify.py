"""The time a training job spends verifying its shards before its first step, before and after the
verified-shard stamps (cmim.data.manifest.verify_shards), on a large generated split; and that a shard
damaged in place is still caught.

    python benchmarks/verify.py                 # a 4 GB split; needs ~4 GB of free disk, ~2 minutes
    python benchmarks/verify.py --gb 1

What it does, in a temporary folder (removed at the end):
1. writes a split of `--gb` GB with cmim's ShardWriter and the sharder's defaults (shards of at most
   10,000 samples and 1 GB): `--distinct` generated photo JPEGs (cmim.data.photos, ImageNet sizes)
   cycled under unique keys, with labels, and its manifest (sha256 of every shard);
2. times cmim.launch.verify_manifests, what every training job runs before its first step:
   - before: every shard hashed (verify_shards(recheck=True): what each job did before the stamps,
     and what the first job on a split still does), with the shards in the page cache (warm) and
     evicted from it (cold: posix_fadvise DONTNEED on each shard, no other file touched);
   - after: a second job on stamped, unchanged shards (each shard's size, mtime, ctime, inode and
     device compared with .verified.json), warm and cold;
   - damaged: one byte flipped in place in the middle of one shard (same size): the next job hashes
     that shard alone and fails naming it; the byte restored, the next job hashes it again and passes;
3. prints a table and writes benchmarks/results/<date>-cpu-verify.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cmim import io as io_
from cmim.bench.run import device_name
from cmim.data import manifest as M
from cmim.data.images import Sample
from cmim.data.photos import IMAGENET_SIZES, photo_jpeg
from cmim.data.shard_writer import ShardWriter
from cmim.errors import DataError
from cmim.launch import verify_manifests


def write_split(folder: Path, gb: float, distinct: int) -> dict:
    """Shards of the sharder's default limits holding `gb` GB of cycled generated JPEGs, and the manifest."""
    folder.mkdir(parents=True)
    jpegs = [photo_jpeg(*IMAGENET_SIZES[i % len(IMAGENET_SIZES)], seed=i) for i in range(distinct)]
    writer = ShardWriter(folder, "train", max_count=10000, max_bytes=1e9)
    n, total = 0, 0
    while total < gb * 1e9:
        data = jpegs[n % distinct]
        writer.write(Sample(f"s{n:09d}", {"jpg": data, "cls": str(n % 1000).encode()}, f"gen/{n}", (0, 0)))
        n, total = n + 1, total + len(data) + 1536   # + 3 tar headers (jpg, cls and its data block)
    shards = writer.close()
    manifest = {"dataset": "bench", "split": "train", "num_samples": n, "shards": shards}
    io_.write_json(folder / "manifest.json", manifest)
    return manifest


def evict(folder: Path) -> None:
    """Drop this split's shards from the page cache (clean pages only; nothing else is touched)."""
    for path in folder.glob("*.tar"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn) -> dict:
    lines: list[str] = []
    wall, cpu = time.perf_counter(), time.process_time()
    error = None
    try:
        fn(lines.append)
    except DataError as e:
        error = str(e).splitlines()[0]
    return {"wall_s": round(time.perf_counter() - wall, 4), "cpu_s": round(time.process_time() - cpu, 4),
            "log": lines[-1] if lines else None, "error": error}


def flip(path: Path, offset: int) -> None:
    """One byte inverted in place (same size; mtime and ctime move, as any write moves them)."""
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0xFF]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=4.0, help="split size in GB (default 4)")
    ap.add_argument("--distinct", type=int, default=400, help="distinct generated JPEGs cycled (default 400)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each timing (default 3)")
    ap.add_argument("--workdir", default=None, help="where the split goes (default: the system's temp)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder of the JSON")
    args = ap.parse_args(argv)
    free = shutil.disk_usage(args.workdir or tempfile.gettempdir()).free
    if free < 2.5 * args.gb * 1e9:
        raise SystemExit(f"{free / 1e9:.0f} GB free: a {args.gb} GB split needs less than 40% of the free disk")
    work = Path(tempfile.mkdtemp(prefix="cmim-verify-bench-", dir=args.workdir))
    folder, results = work / "train", {}
    try:
        started = time.perf_counter()
        manifest = write_split(folder, args.gb, args.distinct)
        path = folder / "manifest.json"
        size = sum(s["bytes"] for s in manifest["shards"])
        print(f"[verify bench] {manifest['num_samples']} samples in {len(manifest['shards'])} shards, "
              f"{size / 1e9:.2f} GB, written in {time.perf_counter() - started:.0f}s", flush=True)
        job = lambda log: verify_manifests([path], log=log)
        recheck = lambda log: M.verify_shards(path, log=log, recheck=True)
        cases = {"before (every shard hashed), warm": (recheck, False),
                 "before (every shard hashed), cold": (recheck, True),
                 "after (a second job, stamped shards), warm": (job, False),
                 "after (a second job, stamped shards), cold": (job, True)}
        job(lambda _: None)   # the first job: hashes and stamps
        for _ in range(args.repeats):
            for name, (fn, cold) in cases.items():
                if cold:
                    evict(folder)
                results.setdefault(name, []).append(timed(fn))
        victim = folder / manifest["shards"][len(manifest["shards"]) // 2]["file"]
        middle = victim.stat().st_size // 2
        flip(victim, middle)
        damaged = timed(job)
        assert damaged["error"] and victim.name in damaged["error"], damaged
        flip(victim, middle)
        repaired = timed(job)
        others = len(manifest["shards"]) - 1   # the failed job recorded nothing: the victim alone is hashed
        assert repaired["error"] is None and ": 1 shards, " in repaired["log"], repaired
        assert not others or f"{others} verified before and unchanged" in repaired["log"], repaired
        again = timed(job)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'job':46} {'wall s':>8} {'CPU s':>7}  (median of {args.repeats})")
    rows = []
    for name, runs in results.items():
        row = {"job": name, "wall_s": statistics.median(r["wall_s"] for r in runs),
               "cpu_s": statistics.median(r["cpu_s"] for r in runs), "runs": runs}
        rows.append(row)
        print(f"{name:46} {row['wall_s']:8.4f} {row['cpu_s']:7.4f}")
    for name, r in (("damaged shard: the next job fails", damaged), ("byte restored: the next job", repaired),
                    ("and the one after", again)):
        rows.append({"job": name, **r})
        print(f"{name:46} {r['wall_s']:8.4f} {r['cpu_s']:7.4f}  {(r['error'] or r['log'])[:150]}")
    meta = {"date": datetime.date.today().isoformat(), "cpu": device_name(torch.device("cpu")),
            "cores_visible": len(os.sched_getaffinity(0)),
            "split_bytes": size, "shards": len(manifest["shards"]), "samples": manifest["num_samples"],
            "distinct_jpegs": args.distinct, "hash_threads": min(8, len(os.sched_getaffinity(0))),
            "timing": "wall and process CPU time of cmim.launch.verify_manifests (recheck=True for before); median"}
    out = Path(args.out) / f"{meta['date']}-cpu-verify.json"
    io_.write_json(out, {"meta": meta, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
