"""COCO-style detection samples: decode, ViTDet's large-scale jitter, the loaders (Mask R-CNN).

Stream conventions: cmim.data.dense_streams.

Detection training (ViTDet, detectron2 `projects/ViTDet/configs/common/coco_loader_lsj.py`):
horizontal flip first, then large-scale jitter: scale U(0.1, 2.0) of the square output size,
the image resized to fit that square with its aspect kept, a random crop of at most `image_size`
per side (detectron2's FixedSizeCrop with pad=False), then (option, default on) padded to the
`image_size` square bottom/right with the mean colour, which is ~0 after normalisation like
ViTDet's square_pad. The alternative `mode="resize"` fits the image into the square (detectron2's
ResizeShortestEdge(size, max_size=size)) with no jitter. Crowd annotations (iscrowd=1) are left
out of training targets (they only matter for scoring), and so is an annotation whose box has no
area in the image (`coco_source.zero_area_box`: shards written by cmim no longer hold one; the
manifest lists them under degenerate_boxes; the check here keeps older shards honest). Masks are
decoded with pycocotools at the original size and resized with the image (bilinear with
antialiasing, threshold 0.5); boxes are the tight boxes of the transformed masks (detectron2
recomputes boxes after an LSJ crop too), and instances whose mask vanished are dropped. Images
without instances are kept.
Detection eval: the original image and its COCO image id; the model's transform resizes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from pycocotools import mask as mask_utils

from cmim.data.coco_source import zero_area_box
from cmim.data.dense_streams import eval_pass, sample_field, stream_rng, train_stream, where_of
from cmim.data.loader import decode_image
from cmim.data.manifest import read_manifest, read_shards
from cmim.errors import DataError

IMAGENET_MEAN_UINT8 = (124, 116, 104)  # ImageNet mean x 255, rounded: ~0 after normalisation


_DET_STREAM = 13   # the dense streams apart from each other and the classification one (7)


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


def category_to_label(manifest: dict) -> dict[int, int]:
    """COCO category id -> contiguous label 1..K (sorted ids; 0 is the detector's background)."""
    return {int(c["id"]): i + 1 for i, c in enumerate(sorted(manifest.get("classes", []), key=lambda c: c["id"]))}


def decode_detection(sample: dict, cat_to_label: dict[int, int], *, keep_crowd: bool = False) -> dict:
    """-> {"image": uint8 [H, W, 3], "image_id", "labels": int64 [N], "masks": uint8 [N, H, W],
    "iscrowd": int64 [N]}; crowd annotations dropped unless keep_crowd."""
    image = np.array(decode_image(sample))  # writable copy
    data = sample_field(sample, "json", "COCO layout: image + json")
    try:
        doc = json.loads(data)
        info, anns = doc["image"], doc["annotations"]
    except Exception as e:
        raise DataError(f"{where_of(sample)}: the json field is not {{'image': ..., 'annotations': [...]}}: "
                        f"{e!r}") from e
    h, w = image.shape[:2]
    if (info.get("height"), info.get("width")) != (h, w):
        raise DataError(f"{where_of(sample)}: the json says {info.get('width')}x{info.get('height')} but the image "
                        f"is {w}x{h}")
    labels, masks, crowd = [], [], []
    for ann in anns:
        if ann.get("iscrowd", 0) and not keep_crowd:
            continue
        if isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4 and zero_area_box(ann["bbox"], info):
            continue
        cid = ann.get("category_id")
        if cid not in cat_to_label:
            raise DataError(f"{where_of(sample)}: annotation {ann.get('id')} has category_id {cid}, not in the "
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
        raise DataError(f"{where_of(sample)}: annotation {ann.get('id')}: cannot decode its segmentation: "
                        f"{e!r}") from e


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


def _det_train(src: Iterator, cat_to_label: dict, aug: DetAugment, seed: int, epoch: int) -> Iterator:
    rng = stream_rng(seed, epoch, _DET_STREAM)
    for sample in src:
        yield detection_train_transform(decode_detection(sample, cat_to_label), aug, rng)


def collate_detection(samples: list) -> dict[str, list]:
    return {"images": [s[0] for s in samples], "targets": [s[1] for s in samples]}


def detection_train_loader(manifest_path: str | Path, aug: DetAugment, *, batch_size: int, num_batches: int,
                           epoch: int, seed: int, num_workers: int = 0,
                           shuffle_buffer: int = 1000) -> wds.WebLoader:
    """`num_batches` batches {"images": [uint8 [3, H, W]] * B, "targets": [{"boxes": float [N, 4] xyxy,
    "labels": int64 [N] in 1..K, "masks": uint8 [N, H, W]}] * B} (torchvision's detection format)."""
    cat_to_label = category_to_label(read_manifest(manifest_path))
    stage = wds.pipelinefilter(_det_train)(cat_to_label, aug, seed, epoch)
    return train_stream(manifest_path, stage, collate_detection, batch_size=batch_size, num_batches=num_batches,
                         epoch=epoch, seed=seed, num_workers=num_workers, shuffle_buffer=shuffle_buffer)


class _DetEval:
    def __init__(self, cat_to_label: dict[int, int]) -> None:
        self.cat_to_label = cat_to_label

    def __call__(self, sample: dict) -> dict:
        decoded = decode_detection(sample, self.cat_to_label, keep_crowd=True)
        image = torch.from_numpy(decoded["image"]).permute(2, 0, 1).contiguous()
        return {"image": image, "image_id": decoded["image_id"], "key": sample["__key__"],
                "index": sample["__index__"]}


def detection_eval_samples(manifest_path: str | Path, *, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                           max_samples: int | None = None) -> Iterator[dict]:
    """This rank's share of the split, once each: {"image": uint8 [3, H, W] original size,
    "image_id": COCO id, "key", "index"}. Scored against the real GT json (`cmim.evals.coco_eval`)."""
    cat_to_label = category_to_label(read_manifest(manifest_path))
    yield from eval_pass(manifest_path, _DetEval(cat_to_label), rank=rank, world_size=world_size,
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
