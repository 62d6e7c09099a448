"""Reading shards: an endless, seeded training stream and an exact, once-per-sample eval pass.

Training (DESIGN section 6): shards are resampled per worker (never run dry, every rank gets the same
number of batches, so DDP never hangs on a short rank), samples are shuffled in a buffer, and
workers decode + RandomResizedCrop to uint8. Every random choice comes from a generator seeded
by (seed, epoch, rank, worker), so epoch e of a run is the same stream whether or not the job was
killed and resumed in between: a resume rebuilds epoch e's loader and skips the batches already
seen. Evaluation reads every sample exactly once, in a deterministic order.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cmim.data.views import ViewSpec

IMAGE_FIELDS = ("jpg", "jpeg", "png")
_INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


class DataError(RuntimeError):
    """A shard or manifest problem, naming the file and how to regenerate it."""


# ----------------------------------------------------------------------------- manifests


def read_manifest(path: str | Path) -> dict:
    """Load a shard manifest and check its shards exist with the recorded sizes (cheap, no hashing)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"shard manifest {path} not found; run the shard step first "
                        f"(snakemake {path})")
    manifest = json.loads(path.read_text())
    if manifest.get("num_samples", 0) < 1 or not manifest.get("shards"):
        raise DataError(f"{path}: the split has no samples; check the dataset's root and splits in the config")
    for shard in manifest["shards"]:
        file = path.parent / shard["file"]
        if not file.exists():
            raise DataError(f"shard {file} listed in {path} is missing; delete {path.parent} and re-run sharding")
        if file.stat().st_size != shard["bytes"]:
            raise DataError(f"shard {file} has {file.stat().st_size} bytes, the manifest says {shard['bytes']}: "
                            f"it is truncated or was replaced; delete {path.parent} and re-run sharding")
    return manifest


def shard_urls(manifest_path: str | Path, manifest: dict) -> list[str]:
    base = Path(manifest_path).parent.resolve()
    return [str(base / s["file"]) for s in manifest["shards"]]


def class_names(manifest: dict) -> list[str]:
    return [c["name"] for c in sorted(manifest.get("classes", []), key=lambda c: c["id"])]


# ----------------------------------------------------------------------------- per-sample work


def decode_image(sample: dict) -> Image.Image:
    for field in IMAGE_FIELDS:
        if field in sample:
            try:
                with Image.open(io.BytesIO(sample[field])) as im:
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


def crop_views(image: Image.Image, view: ViewSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """uint8 [V, 3, S, S]: V random resized crops, or the deterministic eval view."""
    interp = _INTERP[view.interpolation]
    size = [view.crop_size, view.crop_size]
    if view.center_crop_pct is not None:
        short = int(round(view.crop_size / view.center_crop_pct))
        resized = F.resize(image, [short], interpolation=interp) if min(image.size) != short else image
        return F.pil_to_tensor(F.center_crop(resized, size)).unsqueeze(0)
    crops = []
    for _ in range(view.num_views):
        top, left, h, w = random_crop_box(image.width, image.height, view, rng)
        crops.append(F.pil_to_tensor(F.resized_crop(image, top, left, h, w, size, interpolation=interp)))
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


# ----------------------------------------------------------------------------- loaders


def train_loader(manifest_path: str | Path, view: ViewSpec, *, batch_size: int, num_batches: int, epoch: int,
                 seed: int, num_workers: int = 0, shuffle_buffer: int = 2000) -> wds.WebLoader:
    """`num_batches` batches of `batch_size` (this rank's micro-batch) for one epoch of one rank.

    The stream depends only on (seed, epoch, rank, worker, num_workers), so rebuilding it after a
    resume reproduces the same batches.
    """
    manifest = read_manifest(manifest_path)
    urls = shard_urls(manifest_path, manifest)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed * 100003 + epoch, deterministic=True),
        wds.tarfile_to_samples(handler=_raise_with_shard),
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
    manifest = read_manifest(manifest_path)
    urls = shard_urls(manifest_path, manifest)
    num_workers = min(num_workers, len(urls))  # a worker without a shard would fail empty_check
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=_raise_with_shard),
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
