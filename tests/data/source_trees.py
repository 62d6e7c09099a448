"""Tiny source trees for the reader and sharder tests: imagefolder, ADE20K and COCO layouts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def pixels(seed: int, size=(12, 10)) -> np.ndarray:
    """uint8 [H, W, 3]: a smooth seed-dependent gradient (JPEG keeps it close); size is (width, height)."""
    base = np.random.default_rng(seed).integers(30, 220, 3)
    y, x = np.mgrid[: size[1], : size[0]]
    return np.clip(base + 3 * x[..., None] - 2 * y[..., None] + 4 * np.arange(3), 0, 255).astype(np.uint8)


def encode(arr_or_image, fmt: str, **kw) -> bytes:
    im = arr_or_image if isinstance(arr_or_image, Image.Image) else Image.fromarray(arr_or_image)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def cmyk_jpeg(seed: int = 7) -> bytes:
    return encode(Image.fromarray(pixels(seed)).convert("CMYK"), "JPEG", quality=95)


def make_imagefolder(root: Path, split: str = "train", n_per_class: int = 4, bad: bool = False) -> dict:
    """<root>/<split>/{cat,dog}/: JPEGs and PNGs; with bad=True also a truncated JPEG, a zero-byte
    file, a text file named .jpg and a CMYK JPEG. Returns {relative source: (label, bytes)} of the
    good as-given files, and the lists of bad and converted sources."""
    good, n = {}, 0
    for label, cls in enumerate(["cat", "dog"]):
        for i in range(n_per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 == 0 else ("PNG", "png")
            data = encode(pixels(n, size=(12 + i, 10)), fmt)
            rel = f"{split}/{cls}/img_{i}.{ext}"
            good[rel] = (label, write(root / rel, data).read_bytes())
            n += 1
    out = {"good": good, "bad": {}, "converted": []}
    if bad:
        jpeg = encode(pixels(99, size=(40, 32)), "JPEG")
        write(root / split / "cat" / "truncated.jpg", jpeg[: len(jpeg) * 3 // 4])
        write(root / split / "dog" / "empty.jpg", b"")
        write(root / split / "dog" / "notes.jpg", b"this is a text file, not a JPEG\n")
        write(root / split / "cat" / "cmyk.jpg", cmyk_jpeg())
        out["bad"] = {f"{split}/cat/truncated.jpg": "truncated", f"{split}/dog/empty.jpg": "empty",
                      f"{split}/dog/notes.jpg": "not an image"}
        out["converted"] = [f"{split}/cat/cmyk.jpg"]
    return out


OBJECT_INFO = ("Idx\tRatio\tTrain\tVal\tName\n"
               "1\t0.1576\t11664\t1172\twall\n"
               "2\t0.1072\t6046\t612\tbuilding, edifice\n"
               "3\t0.0878\t8265\t796\tperson;individual;someone;somebody;mortal;soul\n")


def make_ade20k(root: Path, nested: bool = True, object_info: bool = True) -> Path:
    """ADEChallengeData2016 tree: training (3 paired images + one without annotation), validation (1)."""
    base = root / "ADEChallengeData2016" if nested else root
    for split, n in (("training", 3), ("validation", 1)):
        for i in range(n):
            stem = f"ADE_{split[:5]}_{i + 1:08d}"
            write(base / "images" / split / f"{stem}.jpg", encode(pixels(i, size=(16, 12)), "JPEG"))
            seg = (np.arange(16 * 12).reshape(12, 16) % 4).astype(np.uint8)  # labels 0..3, 0 = unlabelled
            write(base / "annotations" / split / f"{stem}.png", encode(seg, "PNG"))
    write(base / "images" / "training" / "ADE_train_00000099.jpg", encode(pixels(5, size=(16, 12)), "JPEG"))
    if object_info:
        (base / "objectInfo150.txt").write_text(OBJECT_INFO)
    return base


COCO_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"},
                   {"id": 90, "name": "toothbrush", "supercategory": "indoor"}]


def make_coco(root: Path, split: str = "val2017") -> dict:
    """Three images (one without annotations), category ids 1, 3, 90 listed out of order."""
    images = []
    for i, image_id in enumerate([42, 7, 139]):
        name = f"{image_id:012d}.jpg"
        write(root / split / name, encode(pixels(i, size=(20, 16)), "JPEG"))
        images.append({"id": image_id, "file_name": name, "width": 20, "height": 16})
    annotations = [
        {"id": 5, "image_id": 42, "category_id": 90, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0,
         "segmentation": [[1, 2, 4, 2, 4, 6]]},
        {"id": 2, "image_id": 42, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0,
         "segmentation": [[0, 0, 5, 0, 5, 5]]},
        {"id": 9, "image_id": 139, "category_id": 3, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0,
         "segmentation": [[2, 2, 10, 2, 10, 10]]},
    ]
    doc = {"info": {"description": "tiny"}, "images": images, "annotations": annotations,
           "categories": [COCO_CATEGORIES[2], COCO_CATEGORIES[0], COCO_CATEGORIES[1]]}
    write(root / "annotations" / f"instances_{split}.json", json.dumps(doc).encode())
    return doc
