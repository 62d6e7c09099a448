"""Dataset sources: one reader per layout (`open_reader`), all producing the same WebDataset-ready samples.

A reader (cmim.data.readers.Reader) lists one split of a source cheaply and in a deterministic sorted
order (`records()`: paths and labels only, never image bytes; ImageNet is 150 GB), and
cmim.data.images.build_sample turns one record into a `Sample` or a `Skip`, under the image policy
written there. Formats: imagefolder, ADE20K and Fashion-MNIST here, COCO in cmim.data.coco_source
(`READERS`); the demo-ade20k / demo-coco trees are generated in the real layouts and read by the
ade20k / coco readers.

Annotation consistency (COCO json, ADE20K PNGs), checked when a split is listed or a sample built:
- the split fails (SourceError naming the file): a json that does not parse or is not a COCO
  instances file, a category without an integer id and a name or an id used twice (the class list is
  every sample's contract), a malformed objectInfo150.txt, a missing annotations folder.
- the image is skipped (a `Skip`: listed in the manifest's `skipped`, counts toward max_bad_fraction):
  everything that can be pinned on one image. COCO: no integer id, no positive width/height, a width/
  height that differs from the file, an id or file_name used by two image records (all of them: which
  annotations belong to which cannot be told), a missing file, and any bad annotation of the image
  (no integer id or an id used twice, a category_id not in categories, a bbox that is not
  [x, y, w, h] with w, h >= 0): the whole image, not just the annotation, because an image with an
  object left out teaches a detector that the object is background and costs AP in evaluation.
  ADE20K: no annotation PNG, an annotation of another size, a label value outside the class list
  (objectInfo150.txt ids + 0). A COCO image record without a file_name is listed by its place
  (`annotations/instances_<split>.json:images[i]`).
- the annotation is dropped (`Reader.dropped()`: listed in the manifest's `dropped_annotations`,
  never fails the split): what belongs to no image we store. A COCO annotation without image_id or
  with an image_id that no image record has, an ADE20K annotation PNG without its image. These change
  no stored sample, and a json whose image list was cut on purpose (a mini-val) has many of them.
- the annotation is left out of its image (`Reader.degenerate_boxes()`: listed in the manifest's
  `degenerate_boxes`, the image is stored without it): a COCO bbox with no area inside its image
  (w or h <= 0, or outside the image; `coco_source.zero_area_box`), as detectron2 and torchvision's
  references drop such boxes from training targets. No detector can predict it and pycocotools can
  never match it. In the val split the official ground truth json is scored as it is; the detection
  job warns about such boxes there (cmim.evals.coco_eval.unmatchable_annotations).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from cmim.data import fashion_mnist
from cmim.data.coco_source import COCOReader
from cmim.data.images import Record, Skip
from cmim.data.readers import Reader, SampleKeys, list_files, path_stem
from cmim.datasets import check_format
from cmim.errors import SourceError


class ImageFolderReader(Reader):
    """<root>/<split>/<class>/<image>; class id = index of the class folder in sorted order."""

    fmt = "imagefolder"
    LAYOUT = "<root>/<split>/<class>/<image>"

    def __init__(self, root, split, resize_short_side=None):
        super().__init__(root, split, resize_short_side)
        self.location = self.root / split
        if not self.location.is_dir():
            raise SourceError(f"imagefolder: {self.location} is not a folder (layout {self.LAYOUT}, "
                              f"split {split!r}; see datasets.<name>.root and .splits)")
        self.class_names = sorted(e.name for e in os.scandir(self.location)
                                  if e.is_dir() and not e.name.startswith("."))
        if not self.class_names:
            raise SourceError(f"imagefolder: no class folders in {self.location} (layout {self.LAYOUT})")

    def classes(self):
        return [{"id": i, "name": name} for i, name in enumerate(self.class_names)]

    def records(self):
        keys, out = SampleKeys(), []
        loose = [e.name for e in os.scandir(self.location) if e.is_file() and not e.name.startswith(".")]
        out += [Skip(f"{self.split}/{name}", "not inside a class folder") for name in sorted(loose)]
        for label, name in enumerate(self.class_names):
            for rel in list_files(self.location / name):
                out.append(Record(keys(f"{name}/{path_stem(rel)}"), f"{self.split}/{name}/{rel}", label=label))
        return out


class ADE20KReader(Reader):
    """ADEChallengeData2016: images/<split>/*.jpg + annotations/<split>/<stem>.png (0 = unlabelled).

    `root` is the folder holding ADEChallengeData2016/ or that folder itself. Class ids are the
    annotation values (1..150 for real ADE20K), names from objectInfo150.txt (first synonym); with an
    objectInfo150.txt, an annotation holding any other value than its ids or 0 is skipped.
    """

    fmt = "ade20k"
    LAYOUT = "ADEChallengeData2016/{images,annotations}/<split>/"

    def __init__(self, root, split, resize_short_side=None):
        super().__init__(root, split, resize_short_side)
        nested = self.root / "ADEChallengeData2016"
        self.base = "ADEChallengeData2016/" if nested.is_dir() else ""
        self.location = self.root / self.base / "images" / split
        if not self.location.is_dir():
            raise SourceError(f"ade20k: {self.location} is not a folder; root must hold {self.LAYOUT} "
                              f"or be the ADEChallengeData2016 folder itself (split {split!r})")
        if not self._annotations().is_dir():
            raise SourceError(f"ade20k: {self._annotations()} is not a folder; every image of {self.location} "
                              f"needs its annotation PNG there (layout {self.LAYOUT})")
        self._listing: tuple[list[Record | Skip], list[Skip]] | None = None

    def _annotations(self) -> Path:
        return self.root / self.base / "annotations" / self.split

    def _list(self) -> tuple[list[Record | Skip], list[Skip]]:
        """(one Record or Skip per image, the annotation files that belong to no image)."""
        if self._listing is None:
            annotations = set(list_files(self._annotations()))
            images, paired = list_files(self.location), set()
            keys, out = SampleKeys(), []
            ann_dir, img_dir = f"{self.base}annotations/{self.split}", f"{self.base}images/{self.split}"
            for rel in images:
                ann = f"{path_stem(rel)}.png"
                if ann not in annotations:
                    out.append(Skip(f"{img_dir}/{rel}", f"no annotation {ann_dir}/{ann}"))
                else:
                    paired.add(ann)
                    out.append(Record(keys(path_stem(rel)), f"{img_dir}/{rel}", seg=f"{ann_dir}/{ann}"))
            orphans = [Skip(f"{ann_dir}/{a}", f"annotation without an image (no {img_dir}/{path_stem(a)}.*)")
                       for a in sorted(annotations - paired)]
            self._listing = out, orphans
        return self._listing

    def records(self):
        return list(self._list()[0])

    def dropped(self):
        return list(self._list()[1])

    def _object_info(self) -> Path | None:
        for info in (self.root / self.base / "objectInfo150.txt", self.root / "objectInfo150.txt"):
            if info.is_file():
                return info
        return None

    def classes(self):
        info = self._object_info()
        return read_object_info(info) if info else self._classes_from_annotations()

    def build_kwargs(self):
        info = self._object_info()  # no class list: the classes are whatever values the annotations hold
        labels = frozenset([0] + [c["id"] for c in read_object_info(info)]) if info else None
        return {**super().build_kwargs(), "seg_labels": labels}

    def _classes_from_annotations(self) -> list[dict]:
        """No objectInfo150.txt: every non-zero value found in the split's annotations, named class_<id>."""
        seen: set[int] = set()
        for r in self.records():
            if isinstance(r, Record):
                try:
                    with Image.open(self.root / r.seg) as im:
                        seen.update(int(v) for v in np.unique(np.asarray(im)))
                except Exception:  # a broken annotation is reported when its sample is built
                    continue
        return [{"id": v, "name": f"class_{v}"} for v in sorted(seen - {0})]


def read_object_info(path: str | Path) -> list[dict]:
    """ADE20K objectInfo150.txt (header `Idx Ratio Train Val Name`, tab-separated) -> [{id, name}].

    The name column holds synonyms (`person;individual;...` or `building, edifice`): keep the first.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read the class list ({e}); restore objectInfo150.txt") from None
    out, seen = [], set()
    for n, line in enumerate(text.splitlines(), start=1):
        cols = line.split("\t") if "\t" in line else line.split(None, 4)
        if not line.strip() or not cols[0].strip().isdigit():  # the header, blank lines
            continue
        if len(cols) < 5:
            raise SourceError(f"{path}:{n}: expected 5 columns (Idx Ratio Train Val Name), got {line!r}")
        if int(cols[0]) in seen:
            raise SourceError(f"{path}:{n}: class id {int(cols[0])} is listed twice; fix the class list")
        seen.add(int(cols[0]))
        name = re.split(r"[;,]", cols[4])[0].strip()
        out.append({"id": int(cols[0]), "name": name})
    if not out:
        raise SourceError(f"{path}: no class lines (expected `Idx Ratio Train Val Name` rows)")
    return sorted(out, key=lambda c: c["id"])


class FashionMNISTReader(Reader):
    """The four IDX .gz files; each image zero-padded 28 -> 32 px and stored as a grey PNG."""

    fmt = "fashion-mnist"

    def __init__(self, root, split, resize_short_side=None):
        if split not in fashion_mnist.SPLITS:
            raise SourceError(f"fashion-mnist: split must be one of {sorted(fashion_mnist.SPLITS)}, "
                              f"got {split!r}")
        try:
            found = fashion_mnist.find_root(root or None)
        except FileNotFoundError as e:
            raise SourceError(str(e)) from None
        super().__init__(found, split, resize_short_side)

    def classes(self):
        return [{"id": i, "name": name} for i, name in enumerate(fashion_mnist.CLASS_NAMES)]

    def records(self):
        try:
            images, labels = fashion_mnist.load(self.root, self.split)
        except (OSError, ValueError, EOFError) as e:  # truncated / not gzip / not IDX: the message names the file
            raise SourceError(f"fashion-mnist: {e}; reinstall the files (scripts/setup.sh)") from None
        file = f"{fashion_mnist.SPLITS[self.split]}-images-idx3-ubyte.gz"
        return [Record(f"{self.split}_{i:06d}", f"{file}:{i}", label=int(labels[i]), pixels=images[i])
                for i in range(len(images))]


READERS: dict[str, type[Reader]] = {"imagefolder": ImageFolderReader, "ade20k": ADE20KReader,
                                    "coco": COCOReader, "fashion-mnist": FashionMNISTReader}


def open_reader(fmt: str, root: str | Path | None, split: str, *,
                resize_short_side: int | None = None) -> Reader:
    """The reader of `fmt` for one source split (e.g. open_reader("ade20k", root, "training"))."""
    check_format(fmt)
    if not root and fmt != "fashion-mnist":
        raise SourceError(f"{fmt}: a root folder is needed (datasets.<name>.root)")
    return READERS[fmt](root, split, resize_short_side)
