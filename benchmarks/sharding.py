"""Sharding throughput with 1 and 2 worker processes, the start cost of the worker pool, and the
split size from which the pool pays (cmim.data.shard.POOL_MIN_RECORDS).

    python benchmarks/sharding.py                       # 3000 generated JPEGs, ~3 minutes
    python benchmarks/sharding.py --sizes 300 1000 --repeats 1

What it does, in a temporary folder (removed at the end):
1. generates the largest of `--sizes` photo-like JPEGs at ImageNet's common sizes (cmim.data.photos)
   in ImageFolder layout, and one ImageFolder tree per size holding its first n files (hard links);
2. shards each tree with cmim.data.shard.shard_split, with workers=1 and with workers=2 and the
   pool forced on (POOL_MIN_RECORDS=0), each run in a fresh Python process, as a Snakemake shard
   job runs (the forkserver and its workers start from nothing), timed inside that process around
   shard_split (wall clock: the two workers need the machine's two cores), `--repeats` times,
   interleaved, median reported; the manifests of the two (their shards' sha256) must be equal;
3. times the pool's start alone, in fresh processes: forkserver Pool(2) to its first result of a
   no-op task of cmim.data.images (the workers import what build_sample needs);
4. probes the machine before and after: 2 processes of pure CPU work (sha256) against 1; on a
   shared machine a speed-up under ~1.8 means other users held part of the cores, and then no
   wall-clock figure of 2 workers can show what a free machine gives;
5. reports img/s, the speed-up, and the break-even split size
       n* = start / (1/r1 - 1/r2)            (r1, r2: samples/s of 1 and 2 processes)
   above which 2 processes finish first, from the measured rates and from a model of k free cores
   (r_k = r1 / ((1 - p) + p / k), p = build_sample's share of a record's time, timed alone: the tar
   writing and hashing stay in the main process); writes benchmarks/results/<date>-cpu-sharding.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cmim import io as io_
from cmim.bench.run import device_name
from cmim.data.photos import IMAGENET_SIZES, image_folder

_SHARD = """
import json, sys, time
from cmim.data import shard as S
S.POOL_MIN_RECORDS = 0   # the pool whenever workers > 1: this measures it
root, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
m = S.shard_split("imagefolder", root, "bench", "train", "train", out, workers=workers, log=lambda _: None)
print(json.dumps({"seconds": time.perf_counter() - t, "num_samples": m["num_samples"],
                  "sha256": [s["sha256"] for s in m["shards"]]}))
"""

_BUILD = """
import json, sys, time
from cmim.data.sources import open_reader
reader = open_reader("imagefolder", sys.argv[1], "train")
records = reader.records()
t = time.perf_counter()
for r in records:
    reader.build(r)
print(json.dumps({"seconds": time.perf_counter() - t, "records": len(records)}))
"""

_CAPACITY = """
import hashlib, json, multiprocessing, time
def work(_):
    h, b = hashlib.sha256(), b"x" * (1 << 20)
    for _ in range(300):
        h.update(b)
if __name__ == "__main__":
    t = time.perf_counter(); [work(i) for i in range(4)]; serial = time.perf_counter() - t
    with multiprocessing.get_context("fork").Pool(2) as pool:
        t = time.perf_counter(); pool.map(work, range(4), chunksize=1); two = time.perf_counter() - t
    print(json.dumps({"speedup": serial / two}))
"""

_POOL = """
import json, multiprocessing, time
from cmim.data import images
t = time.perf_counter()
with multiprocessing.get_context("forkserver").Pool(2) as pool:
    list(pool.imap(images.BadSample, ["x", "y"], chunksize=1))   # a class of the module build_sample lives in
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def _python(code: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def trees(work: Path, sizes: list[int]) -> dict[int, Path]:
    """One ImageFolder per size: the first n of the same generated files (hard links: no copies)."""
    files = image_folder(work / "all", "train", max(sizes))
    out = {}
    for n in sizes:
        root = work / f"n{n}"
        for path in files[:n]:
            dest = root / "train" / path.parent.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)
        out[n] = root
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 3000], help="split sizes (records)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default 2)")
    ap.add_argument("--pool-repeats", type=int, default=5, help="fresh-process pool starts timed (default 5)")
    ap.add_argument("--workdir", default=None, help="where the temporary data go (default: the system's temp)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder of the JSON")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cmim-shard-bench-", dir=args.workdir))
    try:
        started = time.perf_counter()
        roots = trees(work, args.sizes)
        print(f"[shard bench] {max(args.sizes)} JPEGs generated in {time.perf_counter() - started:.0f}s; load "
              f"average {os.getloadavg()[0]:.2f}", flush=True)
        capacity = [_python(_CAPACITY)["speedup"]]   # 2 processes of pure CPU work vs 1: are 2 cores free?
        runs: dict[tuple[int, int], list[dict]] = {(n, w): [] for n in args.sizes for w in (1, 2)}
        for r in range(args.repeats):
            for (n, w) in runs:
                out = work / f"out-{n}-{w}-{r}"
                runs[(n, w)].append(_python(_SHARD, str(roots[n]), str(out), str(w)))
                shutil.rmtree(out)
        pool = [_python(_POOL)["seconds"] for _ in range(args.pool_repeats)]
        build = [_python(_BUILD, str(roots[max(args.sizes)])) for _ in range(args.repeats)]
        capacity.append(_python(_CAPACITY)["speedup"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    start = statistics.median(pool)
    rows = []
    for n in args.sizes:
        one, two = runs[(n, 1)], runs[(n, 2)]
        assert all(x["sha256"] == one[0]["sha256"] for x in one + two), f"n={n}: shards differ across worker counts"
        r1 = statistics.median(n / x["seconds"] for x in one)
        r2 = statistics.median(n / x["seconds"] for x in two)
        rows.append({"records": n, "img_s_1_worker": round(r1, 1), "img_s_2_workers": round(r2, 1),
                     "speedup": round(r2 / r1, 3), "seconds_1": [round(x["seconds"], 3) for x in one],
                     "seconds_2": [round(x["seconds"], 3) for x in two], "identical_shards": True})
    big = rows[-1]
    r1, r2 = big["img_s_1_worker"], big["img_s_2_workers"]
    measured = start / (1 / r1 - 1 / r2) if r2 > r1 else None
    # the workers' share of a record's time: build_sample (read, decode, check); the rest (tar, sha256)
    # stays in the main process. k free cores: r_k = r1 / ((1 - p) + p / k), IPC taken as free.
    p = min(1.0, statistics.median(b["seconds"] / b["records"] for b in build) * r1)
    model = {k: r1 / ((1 - p) + p / k) for k in (2, 4, 8)}
    break_even = {k: round(start / (1 / r1 - 1 / rk)) for k, rk in model.items()}
    print(f"\n{'records':>8} {'img/s 1 worker':>15} {'img/s 2 workers':>16} {'speed-up':>9}  shards identical")
    for row in rows:
        print(f"{row['records']:8d} {row['img_s_1_worker']:15.0f} {row['img_s_2_workers']:16.0f} "
              f"{row['speedup']:9.2f}  yes")
    print(f"\npool start (forkserver, 2 workers, to the first result), fresh processes: median {start:.3f}s "
          f"of {[round(x, 3) for x in pool]}")
    print(f"CPU capacity: 2 processes of pure CPU work ran {capacity[0]:.2f}x / {capacity[1]:.2f}x one (before / "
          f"after): {'two cores were free' if min(capacity) > 1.8 else 'other users held part of the cores'}")
    print(f"break-even split size, measured rates: {measured:.0f} records" if measured else
          "break-even split size, measured rates: none (2 workers never faster here)")
    print(f"build_sample share of a record's time p = {p:.2f}; on k free cores (model) img/s "
          + ", ".join(f"k={k}: {v:.0f}" for k, v in model.items())
          + "; break-even records " + ", ".join(f"k={k}: {v}" for k, v in break_even.items()))
    meta = {"date": datetime.date.today().isoformat(), "cpu": device_name(torch.device("cpu")),
            "cores_visible": len(os.sched_getaffinity(0)),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2), "sizes_cycled": IMAGENET_SIZES,
            "repeats": args.repeats, "timing": "wall clock inside a fresh process around shard_split; median"}
    out = Path(args.out) / f"{meta['date']}-cpu-sharding.json"
    io_.write_json(out, {"meta": meta, "rows": rows, "pool_start_s": [round(p, 4) for p in pool],
                         "pool_start_median_s": round(start, 4),
                         "two_process_speedup_of_pure_cpu_work": [round(c, 3) for c in capacity],
                         "break_even_records_measured": round(measured) if measured else None,
                         "build_share": round(p, 3), "model_img_s": {str(k): round(v, 1) for k, v in model.items()},
                         "model_break_even_records": {str(k): v for k, v in break_even.items()}})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
