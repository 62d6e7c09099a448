"""Reading shards: an endless, seeded training stream and an exact, once-per-sample eval pass.

Training (DESIGN section 6): shards are resampled per worker (never run dry, every rank gets the same
number of batches, so DDP never hangs on a short rank), samples are shuffled in a buffer, and
workers decode + RandomResizedCrop to uint8. Every random choice comes from a generator seeded
by (seed, epoch, rank, worker), so epoch e of a run is the same stream whether or not the job was
killed and resumed in between: a resume rebuilds epoch e's loader and skips the batches already
seen. Evaluation reads every sample exactly once, in a deterministic order.

Checks against the manifest: `read_manifest` (cheap: every shard there at its size), `verify_shards`
(every shard's sha256: once per job, before training), and while reading, every shard read to its
end holds exactly its manifest count (one that runs past it fails at once: in the resampled training
stream too, where the last shard of an epoch is usually cut off and so is not checked for running
out early) and is the file the job found when it read the manifest (a re-shard under a running job
fails instead of mixing two runs' shards).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torchvision.transforms import InterpolationMode

from cmim.data.views import ViewSpec

IMAGE_FIELDS = ("jpg", "jpeg", "png")
_INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
_PIL_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
VERIFY_PROGRESS_BYTES = 1e9   # splits at least this big get a progress line about every 5% of their bytes
_HASH_CHUNK = 1 << 20         # bytes read per call while hashing (a 1 GB shard never sits in memory)


class DataError(RuntimeError):
    """A shard or manifest problem, naming the file and how to regenerate it."""


# ----------------------------------------------------------------------------- manifests


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


def verify_shards(manifest_path: str | Path, log: Callable[[str], None] = print, *,
                  workers: int | None = None) -> None:
    """Hash every shard of a split and compare with the manifest's sha256 (DataError at the first
    mismatch, naming the shard, both hashes and what to do).

    Run it once per training / evaluation job, before training: the size check of `read_manifest`
    cannot see a shard damaged in place. Cost, measured on one SHA-NI x86 core: hashlib's sha256 runs
    at 1.2-1.4 GB/s, this function at ~1.0 GB/s from the page cache, so ~17 core-minutes per TB;
    `workers` threads (None: one per core, at most 8) hash shards in parallel (hashlib releases the
    GIL), until the disk's read speed decides (1 TB at 2 GB/s: ~8 min). Shards are read in 1 MiB
    chunks (memory stays flat for any shard size); splits of 1 GB or more log progress every ~5%.
    """
    manifest_path = Path(manifest_path)
    _, shards = _snapshot(manifest_path)
    folder = manifest_path.parent
    for shard in shards.values():
        if len(shard.sha256) != 64:
            raise DataError(f"shard {shard.url}: {manifest_path} records no sha256 for it (written by an old "
                            f"version?), so it cannot be verified; delete {folder} and re-run sharding")
    progress = _HashProgress(folder, shards, log)
    workers = workers or min(8, len(os.sched_getaffinity(0)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256")  # hashlib drops the GIL
    try:
        for shard, found in zip(shards.values(), pool.map(_sha256, shards.values())):
            if found != shard.sha256:
                raise DataError(
                    f"shard {shard.url} is damaged: its sha256 is {found}, {manifest_path} says {shard.sha256}; "
                    f"delete {folder} and re-run sharding (the shard changed after it was written: a disk, "
                    f"copy or sync fault)")
            progress.update(shard)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # at a mismatch: do not hash the rest
    progress.done()


def _sha256(shard: _Shard) -> str:
    h, buf = hashlib.sha256(), bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with _open_shard(shard) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class _HashProgress:
    def __init__(self, folder: Path, shards: dict[str, _Shard], log: Callable[[str], None]) -> None:
        self.folder, self.log = folder, log
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
        self.log(f"[verify] {self.folder}: {self.total_shards} shards, {self.total / 1e9:.2f} GB, sha256 ok in "
                 f"{time.perf_counter() - self.started:.1f}s ({self.rate() / 1e6:.0f} MB/s)")


def shard_urls(manifest_path: str | Path, manifest: dict) -> list[str]:
    base = Path(manifest_path).parent.resolve()
    return [str(base / s["file"]) for s in manifest["shards"]]


def class_names(manifest: dict) -> list[str]:
    return [c["name"] for c in sorted(manifest.get("classes", []), key=lambda c: c["id"])]


# ----------------------------------------------------------------------------- per-sample work


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_png_fast(data: bytes) -> Image.Image | None:
    """8-bit grey / RGB PNGs (what the sharder stores) through OpenCV, about 10x cheaper than PIL on
    small images and the same pixels (PNG is lossless); None for anything else (alpha, 16 bit):
    PIL decodes those."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint8:
        return None
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    if array.shape[2] != 3:
        return None
    return Image.fromarray(array[:, :, ::-1])


def decode_image(sample: dict) -> Image.Image:
    for field in IMAGE_FIELDS:
        if field in sample:
            try:
                data = sample[field]
                if data[:8] == PNG_SIGNATURE:
                    fast = _decode_png_fast(data)
                    if fast is not None:
                        return fast
                with Image.open(io.BytesIO(data)) as im:
                    return im.convert("RGB")
            except Exception as e:
                raise DataError(f"{sample.get('__url__', '?')}: sample {sample.get('__key__')}: "
                                f"cannot decode {field}: {e}; the shard is corrupt, re-run sharding") from e
    raise DataError(f"{sample.get('__url__', '?')}: sample {sample.get('__key__')} has no image field "
                    f"({', '.join(IMAGE_FIELDS)}); fields: {sorted(k for k in sample if not k.startswith('__'))}")


def label_of(sample: dict) -> int:
    return int(sample["cls"]) if "cls" in sample else -1


def random_crop_box(width: int, height: int, view: ViewSpec, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): area and log-aspect uniform, 10 tries, then centre."""
    area = width * height
    log_ratio = (math.log(view.ratio[0]), math.log(view.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*view.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the largest centred box within the ratio range
    if in_ratio < view.ratio[0]:
        w, h = width, int(round(width / view.ratio[0]))
    elif in_ratio > view.ratio[1]:
        w, h = int(round(height * view.ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, H, W] (torchvision's pil_to_tensor, without its per-call overhead)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def resize_short_side(image: Image.Image, short: int, interpolation: str) -> Image.Image:
    """The short side to `short`, the long one to int(short x long / short) (torchvision's rule)."""
    w, h = image.size
    if min(w, h) == short:
        return image
    long = int(short * max(w, h) / min(w, h))
    size = (short, long) if w <= h else (long, short)
    return image.resize(size, _PIL_INTERP[interpolation])


def crop_views(image: Image.Image, view: ViewSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """uint8 [V, 3, S, S]: V random resized crops, or the deterministic eval view.

    Plain PIL calls, the ones torchvision's functional API makes for PIL images (crop, then resize
    with the view's filter; centre crop at round((H - S) / 2)), so the pixels are the same; on the
    demo's 32-px images torchvision's wrappers cost twice the work itself.
    """
    interp = _PIL_INTERP[view.interpolation]
    s = view.crop_size
    if view.center_crop_pct is not None:
        resized = resize_short_side(image, int(round(s / view.center_crop_pct)), view.interpolation)
        w, h = resized.size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return pil_to_uint8(resized.crop((left, top, left + s, top + s))).unsqueeze(0)
    crops = []
    for _ in range(view.num_views):
        top, left, h, w = random_crop_box(image.width, image.height, view, rng)
        crops.append(pil_to_uint8(image.crop((left, top, left + w, top + h)).resize((s, s), interp)))
    return torch.stack(crops)


def collate(samples: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    images = torch.stack([s[0] for s in samples])
    labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    return {"images": images, "labels": labels}


# ----------------------------------------------------------------------------- seeded stages


def _worker_seed(seed: int, epoch: int) -> list[int]:
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return [seed, epoch, rank, worker]


def _shuffle(src: Iterator, bufsize: int, seed: int, epoch: int) -> Iterator:
    """Buffer shuffle with a generator seeded per (seed, epoch, rank, worker)."""
    rng = random.Random(str(_worker_seed(seed, epoch)))
    buf: list = []
    for item in src:
        buf.append(item)
        if len(buf) >= bufsize:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def _train_transform(src: Iterator, view: ViewSpec, seed: int, epoch: int) -> Iterator:
    rng = np.random.default_rng([s + 1 for s in _worker_seed(seed, epoch)] + [7])
    for sample in src:
        yield crop_views(decode_image(sample), view, rng), label_of(sample)


def _eval_transform(src: Iterator, view: ViewSpec) -> Iterator:
    for sample in src:
        yield crop_views(decode_image(sample), view, None)[0], label_of(sample)


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


# ----------------------------------------------------------------------------- loaders


def train_loader(manifest_path: str | Path, view: ViewSpec, *, batch_size: int, num_batches: int, epoch: int,
                 seed: int, num_workers: int = 0, shuffle_buffer: int = 2000) -> wds.WebLoader:
    """`num_batches` batches of `batch_size` (this rank's micro-batch) for one epoch of one rank.

    The stream depends only on (seed, epoch, rank, worker, num_workers), so rebuilding it after a
    resume reproduces the same batches.
    """
    manifest, shards = read_shards(manifest_path)
    urls = list(shards)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed * 100003 + epoch, deterministic=True),
        checked_tar_samples(shards),
        wds.pipelinefilter(_shuffle)(min(shuffle_buffer, manifest["num_samples"]), seed, epoch),
        wds.pipelinefilter(_train_transform)(view, seed, epoch),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                           persistent_workers=False, prefetch_factor=4 if num_workers else None)
    return loader.with_epoch(num_batches)


def eval_loader(manifest_path: str | Path, view: ViewSpec, *, batch_size: int, num_workers: int = 0,
                max_samples: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Every sample of the split exactly once (up to max_samples), in a deterministic order."""
    manifest, shards = read_shards(manifest_path)
    urls = list(shards)
    num_workers = min(num_workers, len(urls))  # a worker without a shard would fail empty_check
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        checked_tar_samples(shards),
        wds.pipelinefilter(_eval_transform)(view),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers)
    seen = 0
    for batch in loader:
        if max_samples is not None and seen + len(batch["labels"]) > max_samples:
            keep = max_samples - seen
            batch = {k: v[:keep] for k, v in batch.items()}
        seen += len(batch["labels"])
        if len(batch["labels"]):
            yield batch
        if max_samples is not None and seen >= max_samples:
            return
