"""Loaders for the dense transfers: ADE20K segmentation (UperNet) and COCO detection (Mask R-CNN).

Same conventions as `cmim.data.loader` (and its helpers): a training stream is resampled shards ->
seeded buffer shuffle -> per-sample transforms whose every random choice comes from a numpy
Generator seeded by (seed, epoch, rank, worker) -> full batches only, `num_batches` per epoch, so
epoch e is the same stream after a resume. An eval pass reads every sample exactly once in a
deterministic order (manifest order: shards as listed, samples in tar order, with one worker;
workers interleave whole shards); with `world_size > 1` sample i of the manifest order goes to
rank i % world_size. Workers hand over uint8 images; normalisation happens on the device.

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

Detection training (ViTDet, detectron2 `projects/ViTDet/configs/common/coco_loader_lsj.py`):
horizontal flip first, then large-scale jitter: scale U(0.1, 2.0) of the square output size,
the image resized to fit that square with its aspect kept, a random crop of at most `image_size`
per side (detectron2's FixedSizeCrop with pad=False), then (option, default on) padded to the
`image_size` square bottom/right with the mean colour, which is ~0 after normalisation like
ViTDet's square_pad. The alternative `mode="resize"` fits the image into the square (detectron2's
ResizeShortestEdge(size, max_size=size)) with no jitter. Crowd annotations (iscrowd=1) are left
out of training targets (they only matter for scoring). Masks are decoded with pycocotools at the
original size and resized with the image (bilinear with antialiasing, threshold 0.5); boxes are
the tight boxes of the transformed masks (detectron2 recomputes boxes after an LSJ crop too), and
instances whose mask vanished are dropped. Images without instances are kept.
Detection eval: the original image and its COCO image id; the model's transform resizes it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from cmim.data.loader import (
    DataError,
    _shuffle,
    _worker_seed,
    checked_tar_samples,
    decode_image,
    read_manifest,
    read_shards,
)

IGNORE_INDEX = 255
_BAD = -1                           # label LUT entry for a value outside the class list
BRIGHTNESS_DELTA = 32               # mmseg PhotoMetricDistortion defaults
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18                      # of OpenCV's 0..179 hue
CROP_TRIES = 10                     # mmseg RandomCrop's cat_max_ratio retries
IMAGENET_MEAN_UINT8 = (124, 116, 104)  # ImageNet mean x 255, rounded: ~0 after normalisation
_SEG_STREAM, _DET_STREAM = 11, 13   # keep the dense streams apart from the classification one (7)


# ----------------------------------------------------------------------------- options


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


@dataclass(frozen=True)
class DetAugment:
    """ViTDet's large-scale jitter (mode "lsj") or a plain fit-into-the-square resize ("resize")."""
    image_size: int = 1024
    mode: str = "lsj"
    scale_range: tuple[float, float] = (0.1, 2.0)  # LSJ: fraction of image_size the image is fit into
    flip_prob: float = 0.5
    pad_to_square: bool = True                     # every image image_size x image_size (ViTDet square_pad)
    pad_value: tuple[int, int, int] = IMAGENET_MEAN_UINT8

    def __post_init__(self) -> None:
        if self.mode not in ("lsj", "resize"):
            raise ValueError(f"detection augment mode must be 'lsj' or 'resize', got {self.mode!r}")


# ----------------------------------------------------------------------------- class maps


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


def category_to_label(manifest: dict) -> dict[int, int]:
    """COCO category id -> contiguous label 1..K (sorted ids; 0 is the detector's background)."""
    return {int(c["id"]): i + 1 for i, c in enumerate(sorted(manifest.get("classes", []), key=lambda c: c["id"]))}


# ----------------------------------------------------------------------------- decoding


def _where(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}: sample {sample.get('__key__')}"


def _field(sample: dict, name: str, layout: str) -> bytes:
    if name not in sample:
        fields = sorted(k for k in sample if not k.startswith("__"))
        raise DataError(f"{_where(sample)} has no {name!r} field ({layout}); fields: {fields}. Is this the right "
                        f"dataset format? Re-shard it with the matching format")
    return sample[name]


def decode_segmentation(sample: dict, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (image uint8 [H, W, 3], label uint8 [H, W] after the LUT: 0..K-1 classes, 255 ignore)."""
    image = np.array(decode_image(sample))  # writable copy
    data = _field(sample, "seg.png", "ADE20K layout: image + seg.png")
    try:
        with Image.open(io.BytesIO(data)) as im:
            raw = np.asarray(im)
    except Exception as e:
        raise DataError(f"{_where(sample)}: cannot decode seg.png: {e}; re-run sharding") from e
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise DataError(f"{_where(sample)}: seg.png must be single-channel uint8, got {raw.dtype} {raw.shape}")
    if raw.shape != image.shape[:2]:
        raise DataError(f"{_where(sample)}: seg.png is {raw.shape[::-1]} but the image is {image.shape[1::-1]} (w, h)")
    label = lut[raw]
    if (label == _BAD).any():
        bad = sorted(int(v) for v in np.unique(raw[label == _BAD]))
        known = [int(v) for v in np.flatnonzero((lut != _BAD) & (np.arange(256) != 0) & (np.arange(256) != 255))]
        raise DataError(f"{_where(sample)}: label values {bad[:10]} are not in the class list (ids "
                        f"{known[0]}..{known[-1]} in manifest.json, plus 0 and 255)")
    return image, label.astype(np.uint8)


def decode_detection(sample: dict, cat_to_label: dict[int, int], *, keep_crowd: bool = False) -> dict:
    """-> {"image": uint8 [H, W, 3], "image_id", "labels": int64 [N], "masks": uint8 [N, H, W],
    "iscrowd": int64 [N]}; crowd annotations dropped unless keep_crowd."""
    image = np.array(decode_image(sample))  # writable copy
    data = _field(sample, "json", "COCO layout: image + json")
    try:
        doc = json.loads(data)
        info, anns = doc["image"], doc["annotations"]
    except Exception as e:
        raise DataError(f"{_where(sample)}: the json field is not {{'image': ..., 'annotations': [...]}}: {e!r}") from e
    h, w = image.shape[:2]
    if (info.get("height"), info.get("width")) != (h, w):
        raise DataError(f"{_where(sample)}: the json says {info.get('width')}x{info.get('height')} but the image "
                        f"is {w}x{h}")
    labels, masks, crowd = [], [], []
    for ann in anns:
        if ann.get("iscrowd", 0) and not keep_crowd:
            continue
        cid = ann.get("category_id")
        if cid not in cat_to_label:
            raise DataError(f"{_where(sample)}: annotation {ann.get('id')} has category_id {cid}, not in the "
                            f"class list (manifest.json ids {sorted(cat_to_label)})")
        labels.append(cat_to_label[cid])
        masks.append(_ann_mask(ann, h, w, sample))
        crowd.append(int(ann.get("iscrowd", 0)))
    return {"image": image, "image_id": int(info["id"]), "labels": np.array(labels, np.int64),
            "masks": np.stack(masks) if masks else np.zeros((0, h, w), np.uint8),
            "iscrowd": np.array(crowd, np.int64)}


def _ann_mask(ann: dict, h: int, w: int, sample: dict) -> np.ndarray:
    """COCO polygons, uncompressed RLE (crowd) or compressed RLE -> uint8 [H, W]."""
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):                                   # polygons
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                return np.zeros((h, w), np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(seg, dict):                                 # compressed RLE
            rle = {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str)
                   else seg["counts"]}
        else:
            raise TypeError(f"segmentation of type {type(seg).__name__}")
        return mask_utils.decode(rle).astype(np.uint8)
    except Exception as e:
        raise DataError(f"{_where(sample)}: annotation {ann.get('id')}: cannot decode its segmentation: {e!r}") from e


# ----------------------------------------------------------------------------- segmentation transforms


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


# ----------------------------------------------------------------------------- detection transforms


def _resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] uint8 -> [C, h, w], bilinear with antialiasing (like PIL's, which detectron2 uses)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, H, W] uint8 0/1 -> [N, h, w], bilinear + antialias, threshold 0.5 (one mask at a time: memory)."""
    if tuple(masks.shape[-2:]) == tuple(size) or not len(masks):
        return masks if len(masks) else masks.new_zeros((0, *size))
    out = [(F.interpolate(m[None, None].float(), size=size, mode="bilinear", align_corners=False,
                          antialias=True)[0, 0] > 0.5).to(torch.uint8) for m in masks]
    return torch.stack(out)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[N, H, W] -> float [N, 4] tight xyxy boxes in pixel-edge coordinates (x1 = last column + 1)."""
    if not len(masks):
        return torch.zeros((0, 4), dtype=torch.float32)
    rows, cols = masks.any(dim=2), masks.any(dim=1)                  # [N, H], [N, W]
    h, w = masks.shape[-2:]
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def detection_scale(height: int, width: int, aug: DetAugment, rng: np.random.Generator) -> tuple[int, int]:
    """Output (h, w): LSJ fits the image into a square of U(scale_range) x image_size (detectron2's
    ResizeScale), "resize" into the image_size square; aspect kept, rounded half up."""
    target = aug.image_size * (rng.uniform(*aug.scale_range) if aug.mode == "lsj" else 1.0)
    f = min(target / height, target / width)
    return max(int(height * f + 0.5), 1), max(int(width * f + 0.5), 1)


def detection_train_transform(decoded: dict, aug: DetAugment, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """decode_detection's dict -> (uint8 [3, H', W'], {"boxes", "labels", "masks"}); flip, scale, crop, pad."""
    image = torch.from_numpy(decoded["image"]).permute(2, 0, 1)      # [3, H, W]
    masks = torch.from_numpy(decoded["masks"])                       # [N, H, W]
    labels = torch.from_numpy(decoded["labels"])
    if rng.random() < aug.flip_prob:
        image, masks = image.flip(-1), masks.flip(-1)
    size = detection_scale(image.shape[1], image.shape[2], aug, rng)
    image, masks = _resize_uint8(image, size), _resize_masks(masks, size)
    s = aug.image_size
    if size[0] > s or size[1] > s:                                   # LSJ scaled up: random crop
        y = int(round((max(size[0] - s, 0)) * rng.uniform()))
        x = int(round((max(size[1] - s, 0)) * rng.uniform()))
        image, masks = image[:, y:y + s, x:x + s], masks[:, y:y + s, x:x + s]
    if aug.pad_to_square:
        ph, pw = s - image.shape[1], s - image.shape[2]
        fill = torch.tensor(aug.pad_value, dtype=torch.uint8)[:, None, None]
        padded = fill.expand(3, s, s).clone()
        padded[:, :image.shape[1], :image.shape[2]] = image
        image = padded
        masks = F.pad(masks, (0, pw, 0, ph))
    keep = masks.flatten(1).amax(1) > 0 if len(masks) else torch.zeros(0, dtype=torch.bool)
    masks, labels = masks[keep].contiguous(), labels[keep]
    return image.contiguous(), {"boxes": masks_to_boxes(masks), "labels": labels, "masks": masks}


# ----------------------------------------------------------------------------- streams


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([s + 1 for s in _worker_seed(seed, epoch)] + [stream])


def _seg_train(src: Iterator, lut: np.ndarray, aug: SegAugment, seed: int, epoch: int) -> Iterator:
    # OpenCV's own thread pool (one thread per core by default) in every loader worker oversubscribes
    # the job's cores; its results do not depend on the thread count (checked), so one thread it is.
    cv2.setNumThreads(1)
    rng = _rng(seed, epoch, _SEG_STREAM)
    for sample in src:
        yield segmentation_train_transform(*decode_segmentation(sample, lut), aug, rng)


def _det_train(src: Iterator, cat_to_label: dict, aug: DetAugment, seed: int, epoch: int) -> Iterator:
    rng = _rng(seed, epoch, _DET_STREAM)
    for sample in src:
        yield detection_train_transform(decode_detection(sample, cat_to_label), aug, rng)


def collate_segmentation(samples: list) -> dict[str, torch.Tensor]:
    return {"images": torch.stack([s[0] for s in samples]), "labels": torch.stack([s[1] for s in samples]).long()}


def collate_detection(samples: list) -> dict[str, list]:
    return {"images": [s[0] for s in samples], "targets": [s[1] for s in samples]}


def _train_stream(manifest_path, stage, collate, *, batch_size: int, num_batches: int, epoch: int, seed: int,
                  num_workers: int, shuffle_buffer: int) -> wds.WebLoader:
    manifest, shards = read_shards(manifest_path)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(list(shards), seed=seed * 100003 + epoch, deterministic=True),
        checked_tar_samples(shards),
        wds.pipelinefilter(_shuffle)(min(shuffle_buffer, manifest["num_samples"]), seed, epoch),
        stage,
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False,
                           prefetch_factor=4 if num_workers else None)
    return loader.with_epoch(num_batches)


def segmentation_train_loader(manifest_path: str | Path, aug: SegAugment, *, batch_size: int, num_batches: int,
                              epoch: int, seed: int, num_workers: int = 0,
                              shuffle_buffer: int = 1000) -> wds.WebLoader:
    """`num_batches` batches {"images": uint8 [B, 3, C, C], "labels": int64 [B, C, C]} (255 = ignore)."""
    lut = seg_label_lut(read_manifest(manifest_path), aug.reduce_zero_label)
    stage = wds.pipelinefilter(_seg_train)(lut, aug, seed, epoch)
    return _train_stream(manifest_path, stage, collate_segmentation, batch_size=batch_size, num_batches=num_batches,
                         epoch=epoch, seed=seed, num_workers=num_workers, shuffle_buffer=shuffle_buffer)


def detection_train_loader(manifest_path: str | Path, aug: DetAugment, *, batch_size: int, num_batches: int,
                           epoch: int, seed: int, num_workers: int = 0,
                           shuffle_buffer: int = 1000) -> wds.WebLoader:
    """`num_batches` batches {"images": [uint8 [3, H, W]] * B, "targets": [{"boxes": float [N, 4] xyxy,
    "labels": int64 [N] in 1..K, "masks": uint8 [N, H, W]}] * B} (torchvision's detection format)."""
    cat_to_label = category_to_label(read_manifest(manifest_path))
    stage = wds.pipelinefilter(_det_train)(cat_to_label, aug, seed, epoch)
    return _train_stream(manifest_path, stage, collate_detection, batch_size=batch_size, num_batches=num_batches,
                         epoch=epoch, seed=seed, num_workers=num_workers, shuffle_buffer=shuffle_buffer)


# ----------------------------------------------------------------------------- eval passes


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


def _eval_pass(manifest_path, convert, *, rank: int, world_size: int, num_workers: int,
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


class _DetEval:
    def __init__(self, cat_to_label: dict[int, int]) -> None:
        self.cat_to_label = cat_to_label

    def __call__(self, sample: dict) -> dict:
        decoded = decode_detection(sample, self.cat_to_label, keep_crowd=True)
        image = torch.from_numpy(decoded["image"]).permute(2, 0, 1).contiguous()
        return {"image": image, "image_id": decoded["image_id"], "key": sample["__key__"],
                "index": sample["__index__"]}


def segmentation_eval_samples(manifest_path: str | Path, *, test_scale: tuple[int, int] = (2048, 512),
                              reduce_zero_label: bool = True, rank: int = 0, world_size: int = 1,
                              num_workers: int = 0, max_samples: int | None = None) -> Iterator[dict]:
    """This rank's share of the split, once each: {"image": uint8 [1, 3, h, w] resized (short side
    min(test_scale), long side <= max(test_scale)), "label": int64 [1, H, W] original size,
    "key", "index"}. max_samples: only samples with manifest index < max_samples."""
    lut = seg_label_lut(read_manifest(manifest_path), reduce_zero_label)
    yield from _eval_pass(manifest_path, _SegEval(lut, tuple(test_scale)), rank=rank, world_size=world_size,
                          num_workers=num_workers, max_samples=max_samples)


def detection_eval_samples(manifest_path: str | Path, *, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                           max_samples: int | None = None) -> Iterator[dict]:
    """This rank's share of the split, once each: {"image": uint8 [3, H, W] original size,
    "image_id": COCO id, "key", "index"}. Scored against the real GT json (`cmim.evals.coco_eval`)."""
    cat_to_label = category_to_label(read_manifest(manifest_path))
    yield from _eval_pass(manifest_path, _DetEval(cat_to_label), rank=rank, world_size=world_size,
                          num_workers=num_workers, max_samples=max_samples)


def detection_image_records(manifest_path: str | Path) -> dict[int, dict]:
    """COCO image id -> its image record ({"id", "file_name", "width", "height", ...}) for every sample
    of the split, read from the shards' json members only (tar headers let the images be skipped, so
    a 5000-image split takes about a second). What the detection task checks the GT json against."""
    import tarfile

    _, shards = read_shards(manifest_path)
    records: dict[int, dict] = {}
    for url in shards:
        try:
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    if not (member.isfile() and member.name.endswith(".json")):
                        continue
                    info = json.loads(tar.extractfile(member).read())["image"]
                    records[int(info["id"])] = info
        except (tarfile.TarError, OSError, KeyError, ValueError) as e:
            raise DataError(f"shard {url}: cannot read its COCO image records ({type(e).__name__}: {e}); "
                            f"delete {Path(url).parent} and re-run sharding") from e
    return records
