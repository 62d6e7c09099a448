"""COCO instances files as a source: the reader, and every check of the json before a sample is stored.

What is checked, and what a problem costs (the split, the image or the annotation): cmim.data.sources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmim.data.images import Record, Skip
from cmim.data.readers import Reader, SampleKeys, path_stem
from cmim.errors import SourceError


class COCOReader(Reader):
    """<root>/<split>/ images + <root>/annotations/instances_<split>.json; one sample per image.

    The `json` field holds {"image": <image record>, "annotations": [<its annotations>]} with the
    original (non-contiguous) category ids; images without annotations are kept with []. What is
    checked, and what a problem costs (the split, the image or the annotation): the module docstring.
    """

    fmt = "coco"

    def __init__(self, root, split, resize_short_side=None):
        super().__init__(root, split, resize_short_side)
        if resize_short_side is not None:
            raise SourceError("coco: resize_short_side is not supported (boxes and polygons are in the "
                              "original pixel coordinates); set datasets.<name>.resize_short_side: null")
        self.images = self.root / split
        self.annotation_file = self.root / "annotations" / f"instances_{split}.json"
        self.location = self.annotation_file  # the split is what this file lists
        for path in (self.images, self.annotation_file):
            if not path.exists():
                raise SourceError(f"coco: {path} not found (layout <root>/<split>/ + "
                                  f"<root>/annotations/instances_<split>.json, split {split!r})")
        self._data: dict | None = None
        self._index: tuple[list[Record | Skip], list[Skip], list[Skip]] | None = None

    def _load(self) -> dict:
        if self._data is None:
            self._data = load_coco(self.annotation_file)
        return self._data

    def _listing(self) -> tuple[list[Record | Skip], list[Skip], list[Skip]]:
        if self._index is None:
            where = f"annotations/{self.annotation_file.name}"
            self._index = _COCOIndex(self._load(), self.split, where).listing()
        return self._index

    def classes(self):
        return [dict(c) for c in sorted(self._load()["categories"], key=lambda c: c["id"])]

    def records(self):
        return list(self._listing()[0])

    def dropped(self):
        return list(self._listing()[1])

    def degenerate_boxes(self):
        return list(self._listing()[2])


def load_coco(path: Path) -> dict:
    """Parse a COCO instances file and check what every sample depends on (else SourceError naming it)."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise SourceError(f"coco: cannot read {path}: {e.strerror}; fix its permissions") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8 at all
        raise SourceError(f"coco: {path} is not valid JSON ({e}); fix or re-download it") from None
    problems = _coco_file_problems(data)
    if problems:
        more = f" (and {len(problems) - 1} more problems, below)" if len(problems) > 1 else ""
        raise SourceError(f"coco: {path} is not a usable COCO instances file: {problems[0]}{more}; fix the "
                          f"file (its class list is every sample's contract)\n" + "\n".join(f"  {p}" for p in problems))
    return data


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def _coco_file_problems(data) -> list[str]:
    if not isinstance(data, dict):
        return ["the top level is not a JSON object"]
    out = [f"no {k!r} list" for k in ("images", "categories") if not isinstance(data.get(k), list)]
    if not isinstance(data.get("annotations", []), list):
        out.append("'annotations' is not a list")
    if out:
        return out
    names: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            out.append(f"categories[{i}] needs an integer id and a name, got {str(c)[:80]}")
        elif c["id"] in names:
            out.append(f"category id {c['id']} is used twice ({names[c['id']]!r} and {c['name']!r})")
        else:
            names[c["id"]] = c["name"]
    return out


@dataclass
class _COCOImage:
    index: int                        # place in the json's image list
    record: dict
    source: str                       # <split>/<file_name>
    problems: list[str]
    annotations: list[dict]


class _COCOIndex:
    """Image records with their annotations; every inconsistency noted on the image it concerns."""

    def __init__(self, data: dict, split: str, where: str) -> None:
        self.split, self.where = split, where
        self.categories = {c["id"] for c in data["categories"]}
        self.images, self.unnamed = self._images(data["images"])
        self.degenerate: list[Skip] = []
        self.orphans = self._attach(data.get("annotations", []))

    def listing(self) -> tuple[list[Record | Skip], list[Skip], list[Skip]]:
        """(Records of the good images and Skips of the bad, sorted by source; annotations of no image;
        annotations left out of their image for a zero-area box)."""
        keys, out = SampleKeys(), list(self.unnamed)
        for im in sorted(self.images, key=lambda im: (im.source, im.index)):
            if im.problems:
                prefix = f"image id {im.record['id']}: " if _is_int(im.record.get("id")) else ""
                out.append(Skip(im.source, prefix + "; ".join(im.problems)))
                continue
            doc = {"image": im.record, "annotations": sorted(im.annotations, key=lambda a: a["id"])}
            blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            out.append(Record(keys(path_stem(im.record["file_name"])), im.source, json=blob,
                              expect_size=(im.record["width"], im.record["height"]),
                              ref=f"image id {im.record['id']} in {self.where}"))
        return out, self.orphans, self.degenerate

    def _images(self, entries: list) -> tuple[list[_COCOImage], list[Skip]]:
        images, unnamed = [], []
        for i, im in enumerate(entries):
            name = im.get("file_name") if isinstance(im, dict) else None
            if not isinstance(name, str) or not name.strip():
                what = f"image id {im.get('id')!r}" if isinstance(im, dict) else "an image entry that is not an object"
                unnamed.append(Skip(f"{self.where}:images[{i}]", f"{what} has no file_name"))
                continue
            images.append(_COCOImage(i, im, f"{self.split}/{name}", _image_problems(im), []))
        self._flag_shared(images, lambda im: im.record.get("id") if _is_int(im.record.get("id")) else None,
                          lambda v, others: f"image id {v} is also used by {others}: which annotations "
                                            f"belong to which image cannot be told")
        self._flag_shared(images, lambda im: im.record["file_name"],
                          lambda v, others: f"the file is listed twice (also as {others})")
        return images, unnamed

    @staticmethod
    def _flag_shared(images: list[_COCOImage], key, reason) -> None:
        groups: dict = {}
        for im in images:
            if key(im) is not None:
                groups.setdefault(key(im), []).append(im)
        for value, group in groups.items():
            for im in group if len(group) > 1 else ():
                others = ", ".join(f"{o.source} (images[{o.index}])" for o in group if o is not im)
                im.problems.append(reason(value, others))

    def _attach(self, annotations: list) -> list[Skip]:
        """Give each annotation to its image (noting its problems there); return the ones with no image."""
        by_id: dict[int, list[_COCOImage]] = {}
        for im in self.images:
            if _is_int(im.record.get("id")):
                by_id.setdefault(im.record["id"], []).append(im)
        orphans, holders, uses = [], {}, {}  # annotation id -> images holding it, annotations using it
        for i, ann in enumerate(annotations):
            here = f"{self.where}:annotations[{i}]"
            if not isinstance(ann, dict):
                orphans.append(Skip(here, "annotation entry is not a JSON object"))
                continue
            label, image_id = f"annotation id {ann.get('id')!r}", ann.get("image_id")
            if "image_id" not in ann:
                orphans.append(Skip(here, f"{label} has no image_id"))
                continue
            if not _is_int(image_id) or image_id not in by_id:
                orphans.append(Skip(here, f"{label}: image_id {image_id!r} is not in images"))
                continue
            problems = _annotation_problems(ann, self.categories)
            empty = not problems and any(zero_area_box(ann["bbox"], im.record) for im in by_id[image_id])
            if empty:
                im = by_id[image_id][0]
                self.degenerate.append(Skip(here, f"{label} of image id {image_id}: bbox {ann['bbox']} has no area "
                                                  f"inside the {im.record['width']}x{im.record['height']} image; "
                                                  f"left out of the image's targets, the image is kept"))
            for im in by_id[image_id]:
                if not empty:
                    im.annotations.append(ann)
                im.problems += [f"{label}: {p}" for p in problems]
            if _is_int(ann.get("id")):
                holders.setdefault(ann["id"], []).extend(by_id[image_id])
                uses[ann["id"]] = uses.get(ann["id"], 0) + 1
        for ann_id, n in uses.items():
            for im in {id(im): im for im in holders[ann_id]}.values() if n > 1 else ():
                im.problems.append(f"annotation id {ann_id} is used by {n} annotations of the file")
        return orphans


def _image_problems(im: dict) -> list[str]:
    out = []
    if not _is_int(im.get("id")):
        out.append(f"image record has no integer id (got {im.get('id')!r})")
    w, h = im.get("width"), im.get("height")
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        out.append(f"width/height {w!r}/{h!r} are not positive integers")
    if Path(im["file_name"]).is_absolute() or ".." in Path(im["file_name"]).parts:
        out.append(f"file_name {im['file_name']!r} is not a path inside the split folder")
    return out


def zero_area_box(bbox: list, image: dict) -> bool:
    """A COCO [x, y, w, h] box with no area once clipped to its image (w <= 0, h <= 0, or outside it).

    Such a box is left out of the training targets, as detectron2 (`filter_empty_instances`: boxes
    clipped to the image, kept if wider and taller than 1e-5 px) and torchvision's detection
    references (`ConvertCocoPolysToMask`: clamped to the image, kept if x2 > x1 and y2 > y1) do; a
    box below 1 px but above 0 is kept, as both keep it (pycocotools can match it). An image record
    without a usable width/height is skipped for that reason, so it is never asked here."""
    w, h = image.get("width"), image.get("height")
    if not (_is_int(w) and _is_int(h)):
        return False
    x0, y0, bw, bh = bbox
    return min(x0 + bw, w) - max(x0, 0) <= 0 or min(y0 + bh, h) - max(y0, 0) <= 0


def _annotation_problems(ann: dict, categories: set[int]) -> list[str]:
    out = []
    if not _is_int(ann.get("id")):
        out.append("no integer id")
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
        out.append(f"category_id {ann.get('category_id')!r} is not in categories")
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
            and box[2] >= 0 and box[3] >= 0):
        out.append(f"bbox {box!r} is not [x, y, width, height] with width, height >= 0")
    return out
