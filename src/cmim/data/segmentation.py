"""ADE20K-style segmentation samples: decode, mmseg's training pipeline, the loaders (UperNet).

Stream conventions: cmim.data.dense_streams.

Segmentation training (mmseg's ADE20K pipeline, `configs/_base_/datasets/ade20k.py`):
reduce_zero_label (0 "other" -> 255 ignore, class id v -> v - 1) -> random rescale, ratio
U(0.5, 2.0) of the (2048, 512) (long, short) scale, aspect kept (mmcv's rescale rule, bilinear
image, nearest label) -> random 512 crop, redrawn up to 10 times while one class covers >= 75% of
the crop's labelled pixels (cat_max_ratio 0.75; the 10th redraw is kept unchecked, as mmseg) ->
horizontal flip p 0.5 -> PhotoMetricDistortion on uint8 (each p 0.5: brightness +-32, contrast
x U(0.5, 1.5) first or last, saturation x U(0.5, 1.5), hue shift in [-18, 18) of OpenCV's 180) -> pad to the
crop bottom/right, label 255, image `pad_value` (mmseg normalises before it pads with 0, so its
padding is the mean colour: the segmentation task passes the dataset mean in uint8).
Segmentation eval: the image resized with the same rule at ratio 1 (short side 512, long side at
most 2048); the original label is returned, predictions are resized back to it for scoring.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from cmim.data.dense_streams import eval_pass, sample_field, stream_rng, train_stream, where_of
from cmim.data.loader import decode_image
from cmim.data.manifest import read_manifest
from cmim.errors import DataError

IGNORE_INDEX = 255


_BAD = -1                           # label LUT entry for a value outside the class list


BRIGHTNESS_DELTA = 32               # mmseg PhotoMetricDistortion defaults


CONTRAST_RANGE = (0.5, 1.5)


SATURATION_RANGE = (0.5, 1.5)


HUE_DELTA = 18                      # of OpenCV's 0..179 hue


CROP_TRIES = 10                     # mmseg RandomCrop's cat_max_ratio retries


_SEG_STREAM = 11   # the dense streams apart from each other and the classification one (7)


@dataclass(frozen=True)
class SegAugment:
    """mmseg's ADE20K training pipeline (defaults: the 512 x 512 recipe)."""
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)          # (long edge, short edge) that the ratio multiplies
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75                   # 1.0 turns the crop retry off
    flip_prob: float = 0.5
    photometric: bool = True
    reduce_zero_label: bool = True                # ADE20K: 0 "other" -> ignore, v -> v - 1
    pad_value: tuple[int, int, int] = (0, 0, 0)   # image padding (uint8); the task passes the mean colour


def seg_num_classes(manifest: dict, reduce_zero_label: bool = True) -> int:
    """Classes the model predicts: K with reduce_zero_label, else K + 1 (0 "other" is a class)."""
    return len(manifest.get("classes", [])) + (0 if reduce_zero_label else 1)


def seg_label_lut(manifest: dict, reduce_zero_label: bool = True) -> np.ndarray:
    """int16 [256]: stored annotation value -> training label, _BAD for a value outside the class list.

    Class ids (sorted) become 0..K-1 (reduce_zero_label; 0 -> 255) or 1..K (0 stays 0); 255 is
    ignore either way. For ADE20K's ids 1..150 this is exactly mmseg's reduce_zero_label.
    """
    ids = sorted(int(c["id"]) for c in manifest.get("classes", []))
    if not ids or ids[0] < 1 or ids[-1] > 254:
        raise DataError(f"segmentation classes must have ids in 1..254 (0 is 'other', 255 ignore), got {ids[:5]}...")
    lut = np.full(256, _BAD, np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    lut[0] = IGNORE_INDEX if reduce_zero_label else 0
    for rank, cid in enumerate(ids):
        lut[cid] = rank if reduce_zero_label else rank + 1
    return lut


def decode_segmentation(sample: dict, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (image uint8 [H, W, 3], label uint8 [H, W] after the LUT: 0..K-1 classes, 255 ignore)."""
    image = np.array(decode_image(sample))  # writable copy
    data = sample_field(sample, "seg.png", "ADE20K layout: image + seg.png")
    try:
        with Image.open(io.BytesIO(data)) as im:
            raw = np.asarray(im)
    except Exception as e:
        raise DataError(f"{where_of(sample)}: cannot decode seg.png: {e}; re-run sharding") from e
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise DataError(f"{where_of(sample)}: seg.png must be single-channel uint8, got {raw.dtype} {raw.shape}")
    if raw.shape != image.shape[:2]:
        raise DataError(f"{where_of(sample)}: seg.png is {raw.shape[::-1]} but the image is {image.shape[1::-1]} "
                        f"(w, h)")
    label = lut[raw]
    if (label == _BAD).any():
        bad = sorted(int(v) for v in np.unique(raw[label == _BAD]))
        known = [int(v) for v in np.flatnonzero((lut != _BAD) & (np.arange(256) != 0) & (np.arange(256) != 255))]
        raise DataError(f"{where_of(sample)}: label values {bad[:10]} are not in the class list (ids "
                        f"{known[0]}..{known[-1]} in manifest.json, plus 0 and 255)")
    return image, label.astype(np.uint8)


def rescale_size(width: int, height: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv's keep-ratio rule: the largest size with long edge <= max(scale) and short edge <= min(scale)."""
    f = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return max(int(width * f + 0.5), 1), max(int(height * f + 0.5), 1)


def resize_pair(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]):
    """size (w, h): image bilinear, label nearest (cv2, as mmcv)."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image, label
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    label = None if label is None else cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return image, label


def random_rescale(image: np.ndarray, label: np.ndarray, aug: SegAugment, rng: np.random.Generator):
    ratio = rng.uniform(*aug.ratio_range)
    scale = (int(aug.scale[0] * ratio), int(aug.scale[1] * ratio))
    return resize_pair(image, label, rescale_size(image.shape[1], image.shape[0], scale))


def random_crop(image: np.ndarray, label: np.ndarray, size: int, cat_max_ratio: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A size x size window (smaller where the image is); redrawn while one class dominates."""
    def box():
        y = int(rng.integers(0, max(label.shape[0] - size, 0) + 1))
        x = int(rng.integers(0, max(label.shape[1] - size, 0) + 1))
        return y, x

    y, x = box()
    if cat_max_ratio < 1.0:
        for _ in range(CROP_TRIES):
            counts = np.bincount(label[y:y + size, x:x + size].ravel(), minlength=256)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = box()
    return image[y:y + size, x:x + size], label[y:y + size, x:x + size]


def _scaled(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's convert: x * alpha + beta, clipped to 0..255, truncated to uint8."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on RGB uint8 [H, W, 3]."""
    if rng.random() < 0.5:
        image = _scaled(image, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    contrast_first = rng.random() < 0.5

    def contrast(img):
        return _scaled(img, alpha=rng.uniform(*CONTRAST_RANGE)) if rng.random() < 0.5 else img

    if contrast_first:
        image = contrast(image)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _scaled(hsv[:, :, 1], alpha=rng.uniform(*SATURATION_RANGE))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + int(rng.integers(-HUE_DELTA, HUE_DELTA))) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        image = contrast(image)
    return image


def pad_to(image: np.ndarray, label: np.ndarray, size: int,
           value: tuple[int, int, int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Bottom/right padding to size x size: image `value`, label 255."""
    ph, pw = size - image.shape[0], size - image.shape[1]
    if ph <= 0 and pw <= 0:
        return image, label
    padded = np.empty((max(size, image.shape[0]), max(size, image.shape[1]), 3), np.uint8)
    padded[:] = np.asarray(value, np.uint8)
    padded[:image.shape[0], :image.shape[1]] = image
    image = padded
    label = np.pad(label, ((0, max(ph, 0)), (0, max(pw, 0))), constant_values=IGNORE_INDEX)
    return image, label


def segmentation_train_transform(image: np.ndarray, label: np.ndarray, aug: SegAugment,
                                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[H, W, 3] uint8 + [H, W] uint8 -> (uint8 [3, C, C], uint8 [C, C])."""
    image, label = random_rescale(image, label, aug, rng)
    image, label = random_crop(image, label, aug.crop_size, aug.cat_max_ratio, rng)
    if rng.random() < aug.flip_prob:
        image, label = image[:, ::-1], label[:, ::-1]
    if aug.photometric:
        image = photometric_distortion(np.ascontiguousarray(image), rng)
    image, label = pad_to(image, label, aug.crop_size, aug.pad_value)
    return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
            torch.from_numpy(np.ascontiguousarray(label)))


def _seg_train(src: Iterator, lut: np.ndarray, aug: SegAugment, seed: int, epoch: int) -> Iterator:
    # OpenCV's own thread pool (one thread per core by default) in every loader worker oversubscribes
    # the job's cores; its results do not depend on the thread count (checked), so one thread it is.
    cv2.setNumThreads(1)
    rng = stream_rng(seed, epoch, _SEG_STREAM)
    for sample in src:
        yield segmentation_train_transform(*decode_segmentation(sample, lut), aug, rng)


def collate_segmentation(samples: list) -> dict[str, torch.Tensor]:
    return {"images": torch.stack([s[0] for s in samples]), "labels": torch.stack([s[1] for s in samples]).long()}


def segmentation_train_loader(manifest_path: str | Path, aug: SegAugment, *, batch_size: int, num_batches: int,
                              epoch: int, seed: int, num_workers: int = 0,
                              shuffle_buffer: int = 1000) -> wds.WebLoader:
    """`num_batches` batches {"images": uint8 [B, 3, C, C], "labels": int64 [B, C, C]} (255 = ignore)."""
    lut = seg_label_lut(read_manifest(manifest_path), aug.reduce_zero_label)
    stage = wds.pipelinefilter(_seg_train)(lut, aug, seed, epoch)
    return train_stream(manifest_path, stage, collate_segmentation, batch_size=batch_size, num_batches=num_batches,
                         epoch=epoch, seed=seed, num_workers=num_workers, shuffle_buffer=shuffle_buffer)


class _SegEval:
    """Picklable per-sample conversion for the segmentation eval pass."""

    def __init__(self, lut: np.ndarray, test_scale: tuple[int, int]) -> None:
        self.lut, self.test_scale = lut, test_scale

    def __call__(self, sample: dict) -> dict:
        image, label = decode_segmentation(sample, self.lut)
        resized, _ = resize_pair(image, None, rescale_size(image.shape[1], image.shape[0], self.test_scale))
        return {"image": torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].contiguous(),
                "label": torch.from_numpy(label).long()[None], "key": sample["__key__"],
                "index": sample["__index__"]}


def segmentation_eval_samples(manifest_path: str | Path, *, test_scale: tuple[int, int] = (2048, 512),
                              reduce_zero_label: bool = True, rank: int = 0, world_size: int = 1,
                              num_workers: int = 0, max_samples: int | None = None) -> Iterator[dict]:
    """This rank's share of the split, once each: {"image": uint8 [1, 3, h, w] resized (short side
    min(test_scale), long side <= max(test_scale)), "label": int64 [1, H, W] original size,
    "key", "index"}. max_samples: only samples with manifest index < max_samples."""
    lut = seg_label_lut(read_manifest(manifest_path), reduce_zero_label)
    yield from eval_pass(manifest_path, _SegEval(lut, tuple(test_scale)), rank=rank, world_size=world_size,
                          num_workers=num_workers, max_samples=max_samples)
