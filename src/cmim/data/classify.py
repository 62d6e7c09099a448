"""Finetuning views: RandomResizedCrop + flip + RandAugment in the loader workers, as uint8.

Why a stream of its own: pretraining views are crops only (flip, colour and noise run on the batch
on the device), but MAE's finetuning recipe applies timm's RandAugment, a PIL transform, per image
(METHODS.md 2.2): it has to run in the workers. Random erasing and Mixup/CutMix act on the
normalised batch and run on the device (cmim.tasks.finetune).

Every random choice comes from the worker's generator seeded by (seed, epoch, rank, worker), as in
cmim.data.loader; timm's RandAugment draws from the global generators of Python (`random`: op
probabilities, magnitudes) and numpy (`np.random.choice`: which ops), so each image's augmentation
runs under seeds taken from that generator and both global states are put back after: the stream is
a pure function of its seeds, which a resumed job relies on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from cmim.data import loader as L
from cmim.data import manifest as M
from cmim.data.views import ViewSpec
from cmim.errors import DataError


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with bits 0 giving the black image that Pillow < 10 gave (the MAE recipe ran
    on those); Pillow >= 10 raises instead, which ~2% of 'rand-m9-mstd0.5-inc1' draws would hit."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def rand_augment(config: str | None, image_size: int, mean) -> object | None:
    """timm's RandAugment with the hyper-parameters timm's create_transform derives from the image size."""
    if not config:
        return None
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(image_size * 0.45),
               "img_mean": tuple(min(255, round(255 * m)) for m in mean),
               "interpolation": Image.BICUBIC}
    transform = rand_augment_transform(config, hparams)
    for op in transform.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return transform


def _seeded(fn, image: Image.Image, seed: int) -> Image.Image:
    """fn(image) with Python's and numpy's global generators seeded, the caller's states restored after."""
    saved, saved_np = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        return fn(image)
    finally:
        random.setstate(saved)
        np.random.set_state(saved_np)


def finetune_view(image: Image.Image, view: ViewSpec, hflip_prob: float, augment,
                  rng: np.random.Generator) -> torch.Tensor:
    """uint8 [3, S, S]: RandomResizedCrop (bicubic) -> horizontal flip -> RandAugment."""
    top, left, h, w = L.random_crop_box(image.width, image.height, view, rng)
    s = view.crop_size
    crop = image.crop((left, top, left + w, top + h)).resize((s, s), L.PIL_INTERP[view.interpolation])
    if rng.random() < hflip_prob:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if augment is not None:
        crop = _seeded(augment, crop, int(rng.integers(2**31)))
    return L.pil_to_uint8(crop)


def _finetune_transform(src: Iterator, view: ViewSpec, hflip_prob: float, augment, seed: int, epoch: int,
                        num_classes: int) -> Iterator:
    rng = np.random.default_rng([s + 1 for s in L.worker_seed(seed, epoch)] + [11])
    for sample in src:
        label = L.label_of(sample)
        if not 0 <= label < num_classes:
            raise DataError(f"{sample.get('__url__', '?')}: sample {sample.get('__key__')} has label {label}, "
                              f"outside the {num_classes} classes of the train manifest; re-shard the split")
        yield finetune_view(L.decode_image(sample), view, hflip_prob, augment, rng), label


def finetune_loader(manifest_path: str | Path, view: ViewSpec, *, hflip_prob: float, rand_augment_config: str | None,
                    mean, num_classes: int, batch_size: int, num_batches: int, epoch: int, seed: int,
                    num_workers: int = 0, shuffle_buffer: int = 2000) -> wds.WebLoader:
    """`num_batches` batches {"images": uint8 [B, 3, S, S], "labels": int64 [B]} of one rank for one
    epoch; like cmim.data.loader.train_loader, a pure function of (seed, epoch, rank, workers)."""
    manifest, shards = M.read_shards(manifest_path)
    augment = rand_augment(rand_augment_config, view.crop_size, mean)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(list(shards), seed=seed * 100003 + epoch, deterministic=True),
        M.checked_tar_samples(shards),
        wds.pipelinefilter(L.shuffle_samples)(min(shuffle_buffer, manifest["num_samples"]), seed, epoch),
        wds.pipelinefilter(_finetune_transform)(view, hflip_prob, augment, seed, epoch, num_classes),
        wds.batched(batch_size, collation_fn=L.collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False,
                           prefetch_factor=4 if num_workers else None)
    return loader.with_epoch(num_batches)
