"""Writing demo scenes as a dataset tree in the real ADE20K or COCO layout, and the entry point `generate`.

What a scene is and how one is made: cmim.data.scenes. Here: the file layout and encodings of each
layout (fixed encoder settings, so the same arguments give byte-identical trees), a tree replaced
whole or not at all, and the summary the pipeline records.
"""

from __future__ import annotations

import io as bytes_io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from cmim import io
from cmim.data.scene_masks import bbox
from cmim.data.scenes import (
    COCO_CATEGORY_IDS,
    COCO_VAL_IMAGE_ID_OFFSET,
    FMNIST_SPLIT,
    MIN_SIDE,
    SPLITS,
    Scene,
    Sources,
    check_layout,
    classes,
    load_sources,
    make_scene,
)

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 6
MARKER = ".cmim-scenes.json"  # inside each generated tree: it is ours and may be replaced


def encode(array: np.ndarray, fmt: str) -> bytes:
    """Fixed encoder settings, so equal arrays give equal bytes."""
    buf = bytes_io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False)
    else:
        Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


class _ADEWriter:
    """ADEChallengeData2016/{images,annotations}/{training,validation}/ + objectInfo150.txt."""
    tree = "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation"}
    prefix = {"train": "ADE_train", "val": "ADE_val"}

    def __init__(self, base: Path, things: str):
        self.base, self.classes = base, classes("ade20k", things)
        k = len(self.classes) + 1
        self.pixels = np.zeros(k, np.int64)                              # train pixels per class id
        self.images = {s: np.zeros(k, np.int64) for s in SPLITS}         # images containing each id
        self.counts = {s: {"images": 0, "instances": 0, "crowd": 0, "unlabelled_pixels": 0} for s in SPLITS}

    def add(self, split: str, index: int, scene: Scene) -> None:
        stem = f"{self.prefix[split]}_{index + 1:08d}"
        _write(self.base / "images" / self.folder[split] / f"{stem}.jpg", encode(scene.image, "JPEG"))
        _write(self.base / "annotations" / self.folder[split] / f"{stem}.png", encode(scene.semantic, "PNG"))
        hist = np.bincount(scene.semantic.ravel(), minlength=len(self.pixels))
        self.images[split] += hist > 0
        if split == "train":
            self.pixels += hist
        c = self.counts[split]
        c["images"] += 1
        c["instances"] += len(scene.instances)
        c["crowd"] += sum(i.iscrowd for i in scene.instances)
        c["unlabelled_pixels"] += int(hist[0])

    def finish(self) -> None:
        total = max(int(self.pixels.sum()), 1)
        rows = ["Idx\tRatio\tTrain\tVal\tName"]
        for c in self.classes:
            i = c["id"]
            rows.append(f"{i}\t{self.pixels[i] / total:.4f}\t{self.images['train'][i]}\t{self.images['val'][i]}"
                        f"\t{c['name']}")
        io.write_text(self.base / "objectInfo150.txt", "\n".join(rows) + "\n")


class _COCOWriter:
    """coco/{train2017,val2017}/%012d.jpg + coco/annotations/instances_{train,val}2017.json."""
    tree = "coco"
    folder = {"train": "train2017", "val": "val2017"}

    def __init__(self, base: Path, things: str):
        self.base, self.classes = base, classes("coco", things)
        self.docs = {s: {"images": [], "annotations": []} for s in SPLITS}
        self.counts = {s: {"images": 0, "instances": 0, "crowd": 0} for s in SPLITS}

    def add(self, split: str, index: int, scene: Scene) -> None:
        image_id = index + 1 + (COCO_VAL_IMAGE_ID_OFFSET if split == "val" else 0)
        name = f"{image_id:012d}.jpg"
        _write(self.base / self.folder[split] / name, encode(scene.image, "JPEG"))
        h, w = scene.semantic.shape
        doc = self.docs[split]
        doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
        for inst in scene.instances:
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": image_id,
                "category_id": COCO_CATEGORY_IDS[inst.label], "bbox": bbox(inst.mask),
                "area": int(inst.mask.sum()), "iscrowd": int(inst.iscrowd), "segmentation": inst.segmentation})
        c = self.counts[split]
        c["images"] += 1
        c["instances"] += len(scene.instances)
        c["crowd"] += sum(i.iscrowd for i in scene.instances)

    def finish(self) -> None:
        info = {"description": "cmim FMNIST-scenes: Fashion-MNIST things on texture stuff (procedural demo)",
                "version": "1.0", "contributor": "cmim"}
        for split in SPLITS:
            doc = {"info": info, "licenses": [], "categories": self.classes, **self.docs[split]}
            text = json.dumps(doc, separators=(",", ":"))
            io.write_text(self.base / "annotations" / f"instances_{self.folder[split]}.json", text + "\n")


_WRITERS = {"ade20k": _ADEWriter, "coco": _COCOWriter}


def _write(path: Path, data: bytes) -> None:
    """Plain write: the whole tree is built in a temporary folder and renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _replace_tree(tmp: Path, final: Path) -> None:
    """Move the finished tree into place, replacing an earlier generated one, never a foreign tree."""
    if final.exists():
        if not (final / MARKER).exists():
            shutil.rmtree(tmp)
            raise FileExistsError(f"{final} exists and was not generated by cmim.data.scenes; "
                                  "refusing to overwrite it (choose another out_root or delete it)")
        shutil.rmtree(final)
    tmp.rename(final)


# ----------------------------------------------------------------------------- entry point


def generate(out_root: str | Path, layout: str, *, n_train: int = 400, n_val: int = 100, size: int = 96,
             seed: int = 0, fmnist_root: str | Path | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Write n_train + n_val scenes of side `size` under out_root in the real `layout`; return a summary.

    The tree (out_root/ADEChallengeData2016 or out_root/coco) appears complete or not at all; an
    earlier generated tree there is replaced, a tree from elsewhere is refused.
    """
    check_layout(layout)
    if seed < 0 or size < MIN_SIDE or n_train < 0 or n_val < 0:
        raise ValueError(f"need seed >= 0, size >= {MIN_SIDE}, n_train/n_val >= 0 "
                         f"(got seed={seed}, size={size}, n_train={n_train}, n_val={n_val})")
    started = time.perf_counter()
    sources = load_sources(fmnist_root, log)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    final = tree_root(out_root, layout)
    tmp = out_root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted run
    writer = _WRITERS[layout](tmp, sources.things)
    distinct = {}
    for split, n in (("train", n_train), ("val", n_val)):
        used = set()
        for i in range(n):
            scene = make_scene(sources, split, i, size=size, seed=seed)
            writer.add(split, i, scene)
            used.update((it.source, it.index) for it in scene.items)
        distinct[split] = len(used)
    writer.finish()
    summary = _summary(layout, sources, writer, distinct, size=size, seed=seed)
    io.write_text(tmp / MARKER, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _replace_tree(tmp, final)
    log(f"[scenes] {layout}: {n_train} train + {n_val} val scenes of {size} px in {final} "
        f"({writer.counts['train']['instances']} + {writer.counts['val']['instances']} instances, "
        f"things: {sources.things}) in {time.perf_counter() - started:.1f}s")
    return summary


def _summary(layout: str, sources: Sources, writer, distinct: dict, *, size: int, seed: int) -> dict:
    fallback = sources.things != "fashion-mnist"
    splits = {}
    for split in SPLITS:
        origin = "cv2-drawn shapes" if fallback else f"fashion-mnist {FMNIST_SPLIT[split]} split"
        splits[split] = {**writer.counts[split], "things_from": origin,
                         "distinct_items": distinct[split] if not fallback else 0}
    return {"layout": layout, "tree": writer.tree, "size": size, "seed": seed, "things": sources.things,
            "things_fallback": fallback, "classes": writer.classes, "splits": splits}


def tree_root(out_root: str | Path, layout: str) -> Path:
    """The folder `generate` writes: out_root/ADEChallengeData2016 or out_root/coco (the COCO reader's root)."""
    check_layout(layout)
    return Path(out_root) / _WRITERS[layout].tree
