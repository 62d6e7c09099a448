"""The stream and eval-pass machinery both dense-transfer loaders share (cmim.data.segmentation,
cmim.data.detection).

Same conventions as `cmim.data.loader` (and its helpers): a training stream is resampled shards ->
seeded buffer shuffle -> per-sample transforms whose every random choice comes from a numpy
Generator seeded by (seed, epoch, rank, worker) -> full batches only, `num_batches` per epoch, so
epoch e is the same stream after a resume. An eval pass reads every sample exactly once in a
deterministic order (manifest order: shards as listed, samples in tar order, with one worker;
workers interleave whole shards); with `world_size > 1` sample i of the manifest order goes to
rank i % world_size. Workers hand over uint8 images; normalisation happens on the device.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import webdataset as wds

from cmim.data.loader import shuffle_samples, worker_seed
from cmim.data.manifest import checked_tar_samples, read_shards
from cmim.errors import DataError


def where_of(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}: sample {sample.get('__key__')}"


def sample_field(sample: dict, name: str, layout: str) -> bytes:
    if name not in sample:
        fields = sorted(k for k in sample if not k.startswith("__"))
        raise DataError(f"{where_of(sample)} has no {name!r} field ({layout}); fields: {fields}. Is this the right "
                        f"dataset format? Re-shard it with the matching format")
    return sample[name]


def stream_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([s + 1 for s in worker_seed(seed, epoch)] + [stream])


def train_stream(manifest_path, stage, collate, *, batch_size: int, num_batches: int, epoch: int, seed: int,
                  num_workers: int, shuffle_buffer: int) -> wds.WebLoader:
    manifest, shards = read_shards(manifest_path)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(list(shards), seed=seed * 100003 + epoch, deterministic=True),
        checked_tar_samples(shards),
        wds.pipelinefilter(shuffle_samples)(min(shuffle_buffer, manifest["num_samples"]), seed, epoch),
        stage,
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False,
                           prefetch_factor=4 if num_workers else None)
    return loader.with_epoch(num_batches)


def _indexed(src: Iterator, offsets: dict[str, int], rank: int, world_size: int, limit: int | None) -> Iterator:
    """Tag each sample with its manifest index (shard offset + position in the tar); keep this rank's share."""
    url, position = None, 0
    for sample in src:
        if sample["__url__"] != url:
            url, position = sample["__url__"], 0
        index = offsets[url] + position
        position += 1
        if index % world_size == rank and (limit is None or index < limit):
            sample["__index__"] = index
            yield sample


def eval_pass(manifest_path, convert, *, rank: int, world_size: int, num_workers: int,
               max_samples: int | None) -> Iterator[dict]:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    _, shards = read_shards(manifest_path)
    offsets, total = {}, 0
    for url, shard in shards.items():  # manifest order
        offsets[url] = total
        total += shard.count
    urls = [u for u in shards if max_samples is None or offsets[u] < max_samples]  # shards past the limit: unread
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        checked_tar_samples(shards),
        wds.pipelinefilter(_indexed)(offsets, rank, world_size, max_samples),
        wds.map(convert),
    )
    yield from wds.WebLoader(pipeline, batch_size=None, num_workers=min(num_workers, len(urls)))
