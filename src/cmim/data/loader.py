"""Reading shards: an endless, seeded training stream and an exact, once-per-sample eval pass.

Training (DESIGN section 6): shards are resampled per worker (never run dry, every rank gets the same
number of batches, so DDP never hangs on a short rank), samples are shuffled in a buffer, and
workers decode + RandomResizedCrop to uint8. Every random choice comes from a generator seeded
by (seed, epoch, rank, worker), so epoch e of a run is the same stream whether or not the job was
killed and resumed in between: a resume rebuilds epoch e's loader and skips the batches already
seen. Evaluation reads every sample exactly once, in a deterministic order.

Every shard is read through cmim.data.manifest's checks (its manifest count, the file the job found).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from cmim.data import device_decode
from cmim.data.decode import decode_image, decode_pil, decode_tensor, random_crop_box, random_crops
from cmim.data.manifest import checked_tar_samples, read_shards
from cmim.data.views import ViewSpec

PIL_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
DECODE_MODES = ("auto", "pil")  # how workers make the views (cmim.data.decode); launch.decode adds cuda


# ----------------------------------------------------------------------------- per-sample work


def label_of(sample: dict) -> int:
    return int(sample["cls"]) if "cls" in sample else -1


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
    return image.resize(size, PIL_INTERP[interpolation])


def crop_views(image: Image.Image, view: ViewSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """uint8 [V, 3, S, S]: V random resized crops, or the deterministic eval view.

    Plain PIL calls, the ones torchvision's functional API makes for PIL images (crop, then resize
    with the view's filter; centre crop at round((H - S) / 2)), so the pixels are the same; on the
    demo's 32-px images torchvision's wrappers cost twice the work itself.
    """
    interp = PIL_INTERP[view.interpolation]
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


def worker_seed(seed: int, epoch: int) -> list[int]:
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return [seed, epoch, rank, worker]


def shuffle_samples(src: Iterator, bufsize: int, seed: int, epoch: int) -> Iterator:
    """Buffer shuffle with a generator seeded per (seed, epoch, rank, worker)."""
    rng = random.Random(str(worker_seed(seed, epoch)))
    buf: list = []
    for item in src:
        buf.append(item)
        if len(buf) >= bufsize:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def view_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of this worker's crop boxes (the same in every decode mode)."""
    return np.random.default_rng([s + 1 for s in worker_seed(seed, epoch)] + [7])


def _train_transform(src: Iterator, view: ViewSpec, seed: int, epoch: int, decode: str) -> Iterator:
    rng = view_rng(seed, epoch)
    for sample in src:
        if decode == "pil":
            yield crop_views(decode_pil(sample), view, rng), label_of(sample)
        else:
            yield random_crops(decode_tensor(sample), view, rng), label_of(sample)


def _device_transform(src: Iterator, view: ViewSpec, seed: int, epoch: int) -> Iterator:
    rng = view_rng(seed, epoch)
    for sample in src:
        yield device_decode.payload(sample, view, rng, label_of(sample))


def _eval_transform(src: Iterator, view: ViewSpec) -> Iterator:
    for sample in src:
        yield crop_views(decode_image(sample), view, None)[0], label_of(sample)


# ----------------------------------------------------------------------------- loaders


def train_loader(manifest_path: str | Path, view: ViewSpec, *, batch_size: int, num_batches: int, epoch: int,
                 seed: int, num_workers: int = 0, shuffle_buffer: int = 2000, decode: str = "auto",
                 decode_device: torch.device | None = None) -> Iterable[dict[str, torch.Tensor]]:
    """`num_batches` batches of `batch_size` (this rank's micro-batch) for one epoch of one rank.

    The stream depends only on (seed, epoch, rank, worker, num_workers), so rebuilding it after a
    resume reproduces the same batches. `decode`: how the workers make the views, `auto` or `pil`
    (cmim.data.decode; the same crop boxes either way). `decode_device`: the workers hand JPEG bytes
    and boxes over and this process decodes them there (cmim.data.device_decode; None: the workers).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    manifest, shards = read_shards(manifest_path)
    urls = list(shards)
    if decode_device is None:
        views, collation = wds.pipelinefilter(_train_transform)(view, seed, epoch, decode), collate
    else:
        views = wds.pipelinefilter(_device_transform)(view, seed, epoch)
        collation = functools.partial(device_decode.collate_payloads, view=view)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed * 100003 + epoch, deterministic=True),
        checked_tar_samples(shards),
        wds.pipelinefilter(shuffle_samples)(min(shuffle_buffer, manifest["num_samples"]), seed, epoch),
        views,
        wds.batched(batch_size, collation_fn=collation, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                           persistent_workers=False, prefetch_factor=4 if num_workers else None)
    loader = loader.with_epoch(num_batches)
    return loader if decode_device is None else device_decode.DeviceViews(loader, view, decode_device)


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
