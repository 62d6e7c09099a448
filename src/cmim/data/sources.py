"""Dataset sources: one reader per layout, all producing the same WebDataset-ready samples.

A reader lists one split of a source cheaply and in a deterministic sorted order (`records()`:
paths and labels only, never image bytes; ImageNet is 150 GB), and `build_sample` turns one record
into a `Sample` (webdataset field name -> bytes) or a `Skip` (what was wrong with it). Splitting the
two lets the sharder permute the records and build samples in worker processes.

Image policy (DESIGN section 6): every image is fully decoded once to prove it is readable. JPEG and
PNG bytes are stored exactly as given; what decoders commonly reject (CMYK / 16-bit / transparent
palettes, BMP, GIF, WEBP, TIFF, ...) is converted, stored and recorded. `Sample.source` and
`Skip.source` are relative to the reader's `root`, so a manifest does not depend on where the data
lives.

Formats: imagefolder, ade20k, coco, fashion-mnist (`READERS`); the demo-ade20k / demo-coco trees are
generated in the real layouts and read by the ade20k / coco readers.

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
"""

from __future__ import annotations

import abc
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmim.data import fashion_mnist

_DEFAULT_SPLITS = {"imagefolder": {"train": "train", "val": "val"},
                   "ade20k": {"train": "training", "val": "validation"},
                   "coco": {"train": "train2017", "val": "val2017"},
                   "fashion-mnist": {"train": "train", "val": "t10k"}}
JPEG_QUALITY = 95           # for every re-encoded JPEG (converted JPEG sources, resized images)
FASHION_MNIST_PAD = 2       # 28 px -> 32 px, so a 4-px (or 8-, 16-px) patch grid tiles the image
_KEEP_MODES = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "L", "P"}}  # stored as given (P: if opaque)
_FIELD = {"JPEG": "jpg", "PNG": "png"}


class SourceError(RuntimeError):
    """The source tree is missing or not in the expected layout (names the folder and the layout)."""


class FormatError(SourceError, ValueError):
    """An unknown source format (a ValueError too: a wrong argument as much as a wrong source)."""


class BadSample(Exception):
    """One record is unusable; the message is the reason recorded in the manifest."""


@dataclass(frozen=True, slots=True)
class Record:
    """One source sample before its bytes are read. Paths are relative to the reader's root."""
    key: str                          # unique in the split, [A-Za-z0-9_-] only (webdataset splits at dots)
    source: str                       # file (or "file:index") relative to root, for messages
    label: int | None = None          # -> `cls`
    json: bytes | None = None         # -> `json` (COCO: image record + its annotations)
    seg: str | None = None            # ADE20K annotation PNG, relative to root -> `seg.png`
    pixels: np.ndarray | None = None  # raw uint8 [H, W] pixels to encode (Fashion-MNIST), else read `source`
    expect_size: tuple[int, int] | None = None  # (width, height) the annotations say the file has (COCO)
    ref: str | None = None            # where the annotations name this file, appended to skip reasons


@dataclass(frozen=True, slots=True)
class Sample:
    key: str
    fields: dict[str, bytes]          # webdataset field name -> bytes: jpg | png, cls | seg.png | json
    source: str
    size: tuple[int, int]             # (width, height) of the stored image
    converted: str | None = None      # why the image (or annotation) was re-encoded, if it was
    resized: bool = False


@dataclass(frozen=True, slots=True)
class Skip:
    source: str
    reason: str


def default_splits(fmt: str) -> dict[str, str]:
    """Our split name -> the source's split name, for a reader format."""
    _check_format(fmt)
    return dict(_DEFAULT_SPLITS[fmt])


# ----------------------------------------------------------------------------- images


def _decode(data: bytes, what: str = "image") -> Image.Image:
    """Fully decode (not just `verify()`): truncated files only fail when the pixels are read."""
    if not data:
        raise BadSample("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadSample(f"not an {what} (PIL cannot identify the format)") from None
    except Exception as e:
        raise BadSample(f"cannot open {what}: {type(e).__name__}: {e}") from None
    try:
        im.load()
    except Exception as e:
        raise BadSample(f"cannot decode {what} ({im.format}): {type(e).__name__}: {e}") from None
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for any mode; 16/32-bit integer grey is taken as 16-bit and scaled to 8 bits."""
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if im.mode != "F" else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("P", "PA"):  # palette with transparency: through RGBA, as PIL asks
        im = im.convert("RGBA")
    return im.convert("RGB")


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def _kept_as_given(im: Image.Image, fmt: str) -> bool:
    """RGB / L JPEGs and RGB / L / opaque-palette PNGs: what every decoder (PIL, torchvision, cv2) reads."""
    return im.mode in _KEEP_MODES[fmt] and not (im.mode == "P" and "transparency" in im.info)


@dataclass(frozen=True, slots=True)
class _Image:
    field: str                        # jpg | png
    data: bytes
    size: tuple[int, int]             # as stored
    source_size: tuple[int, int]      # as decoded from the source file
    converted: str | None
    resized: bool


def _image_field(data: bytes, resize_short_side: int | None) -> _Image:
    """Check one image file; keep its bytes as given, or convert / resize and re-encode them."""
    im = _decode(data)
    source_size, mode = im.size, im.mode
    fmt = "JPEG" if im.format in ("JPEG", "MPO") else im.format  # MPO: a JPEG with extra frames appended
    converted = None
    try:
        if fmt in _KEEP_MODES and not _kept_as_given(im, fmt):
            im = _to_rgb(im)
            data, converted = _encode(im, fmt), f"{fmt} in mode {mode}: converted to RGB, re-encoded as {fmt}"
        elif fmt not in _KEEP_MODES:
            im = im if mode in ("RGB", "L") else _to_rgb(im)
            data, converted = _encode(im, "PNG"), f"{fmt} ({mode}) is not JPEG/PNG: re-encoded as PNG"
            fmt = "PNG"
        resized = resize_short_side is not None and min(im.size) > resize_short_side
        if resized:
            im = _resize(im if im.mode in ("RGB", "L") else _to_rgb(im), resize_short_side)
            data, fmt = _encode(im, "JPEG"), "JPEG"
    except Exception as e:  # a mode PIL cannot convert, an encoder failure: this sample only
        raise BadSample(f"cannot convert {fmt} ({mode}): {type(e).__name__}: {e}") from None
    return _Image(_FIELD[fmt], data, im.size, source_size, converted, resized)


def _resize(im: Image.Image, short_side: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    w, h = im.size
    scale = short_side / min(w, h)
    size = (short_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), short_side)
    return im.resize(size, resample=resample)


def _seg_field(data: bytes, image_size: tuple[int, int], stored_size: tuple[int, int],
               labels: frozenset[int] | None = None) -> tuple[bytes, str | None]:
    """An ADE20K annotation: single-channel uint8 PNG of the image's size with values in `labels`
    (None: any value); P is re-encoded as L indices."""
    seg = _decode(data, "annotation")
    if seg.format != "PNG":
        raise BadSample(f"annotation is {seg.format}, not PNG")
    if seg.mode not in ("L", "P"):
        raise BadSample(f"annotation must be single-channel uint8 (mode L), got mode {seg.mode}")
    if seg.size != image_size:
        raise BadSample(f"annotation size {seg.size} differs from image size {image_size}")
    if labels is not None:
        found = np.flatnonzero(np.bincount(np.asarray(seg).ravel(), minlength=256))  # values present, sorted
        unknown = [int(v) for v in found if int(v) not in labels]
        if unknown:
            raise BadSample(f"annotation has label value(s) {unknown[:10]} not in the class list "
                            f"(objectInfo150.txt ids and 0 = unlabelled)")
    converted = None
    if seg.mode == "P":  # the palette indices are the labels; store them as plain grey values
        seg, converted = Image.fromarray(np.asarray(seg)), "annotation in mode P: re-encoded as L"
    if stored_size != image_size:  # the image was resized: labels follow with nearest neighbour
        seg = seg.resize(stored_size, resample=Image.Resampling.NEAREST)
        data = _encode(seg, "PNG")
    elif converted:
        data = _encode(seg, "PNG")
    return data, converted


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadSample(f"unreadable: {type(e).__name__}: {e.strerror or e}") from None


def build_sample(record: Record, root: str | Path, resize_short_side: int | None = None,
                 seg_labels: frozenset[int] | None = None) -> Sample | Skip:
    """Read, check and encode one record. A pure function of its arguments (runs in worker processes).

    `seg_labels`: the values an annotation PNG may hold (None: any)."""
    try:
        if record.pixels is not None:  # Fashion-MNIST: zero-pad 28 -> 32 px, grey PNG
            padded = Image.fromarray(np.pad(record.pixels, FASHION_MNIST_PAD))
            image = _Image("png", _encode(padded, "PNG"), padded.size, padded.size, None, False)
        else:
            image = _image_field(_read(Path(root) / record.source), resize_short_side)
        if record.expect_size is not None and image.source_size != record.expect_size:
            raise BadSample("image is {}x{} pixels, the annotation file says {}x{}".format(
                *image.source_size, *record.expect_size))
        fields = {image.field: image.data}
        converted = image.converted
        if record.seg is not None:
            fields["seg.png"], seg_converted = _seg_field(_read(Path(root) / record.seg), image.source_size,
                                                          image.size, seg_labels)
            converted = "; ".join(c for c in (converted, seg_converted) if c) or None
        if record.label is not None:
            fields["cls"] = str(record.label).encode("ascii")
        if record.json is not None:
            fields["json"] = record.json
        return Sample(record.key, fields, record.source, image.size, converted, image.resized)
    except BadSample as e:
        return Skip(record.source, f"{e} ({record.ref})" if record.ref else str(e))


# ----------------------------------------------------------------------------- listing helpers


class _Keys:
    """Webdataset keys: [A-Za-z0-9_-] only (the first dot starts the field name), unique in a split."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, name: str) -> str:
        key = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
        unique, n = key, 1
        while unique in self.seen:  # e.g. a.jpg and a.png in one folder; deterministic in sorted order
            n += 1
            unique = f"{key}-{n}"
        self.seen.add(unique)
        return unique


def _files(folder: Path) -> list[str]:
    """Every non-hidden file under `folder` (recursively, following links), as sorted relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_unlistable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        out += [f if rel == "." else f"{rel}/{f}" for f in filenames if not f.startswith(".")]
    return sorted(out)


def _unlistable(e: OSError) -> None:
    """os.walk skips folders it cannot list, silently; their files would vanish from the split unlisted."""
    raise SourceError(f"cannot list {e.filename}: {e.strerror}; fix its permissions or remove it") from e


def _stem(rel: str) -> str:
    """The relative path without the file's extension: 'n014/n014_10026.JPEG' -> 'n014/n014_10026'."""
    head, _, name = rel.rpartition("/")
    name = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{name}" if head else name


def _check_format(fmt: str) -> None:
    if fmt not in READERS:
        hint = " (demo-* trees are read with the ade20k / coco readers)" if fmt.startswith("demo-") else ""
        raise FormatError(f"unknown source format {fmt!r}{hint}; valid: {sorted(READERS)}")


# ----------------------------------------------------------------------------- readers


class Reader(abc.ABC):
    """One split of one source. `records()` lists it (sorted, cheap), iterating yields Sample | Skip."""

    fmt = ""

    def __init__(self, root: str | Path, split: str, resize_short_side: int | None = None) -> None:
        self.root = Path(root)            # Record / Sample / Skip sources are relative to it
        self.split = split                # the source's split name (training, train2017, t10k, ...)
        self.location = self.root         # the folder named in messages (empty split, missing data)
        self.resize_short_side = resize_short_side
        self._build_kwargs: dict | None = None

    @abc.abstractmethod
    def records(self) -> list[Record | Skip]:
        """Every item of the split in a stable order, unreadable ones as Skip."""

    @abc.abstractmethod
    def classes(self) -> list[dict]:
        """[{id, name, ...}] in id order; ids are the values stored in `cls` / `seg.png` / COCO json."""

    def dropped(self) -> list[Skip]:
        """Annotations that belong to no sample of the split (listed, not stored; see the module docstring)."""
        return []

    def build_kwargs(self) -> dict:
        """build_sample's keyword arguments for this split (picklable: worker processes get them)."""
        return {"root": self.root, "resize_short_side": self.resize_short_side}

    def build(self, record: Record) -> Sample | Skip:
        if self._build_kwargs is None:  # once: an ADE20K reader parses objectInfo150.txt for it
            self._build_kwargs = self.build_kwargs()
        return build_sample(record, **self._build_kwargs)

    def __iter__(self) -> Iterator[Sample | Skip]:
        for r in self.records():
            yield r if isinstance(r, Skip) else self.build(r)


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
        keys, out = _Keys(), []
        loose = [e.name for e in os.scandir(self.location) if e.is_file() and not e.name.startswith(".")]
        out += [Skip(f"{self.split}/{name}", "not inside a class folder") for name in sorted(loose)]
        for label, name in enumerate(self.class_names):
            for rel in _files(self.location / name):
                out.append(Record(keys(f"{name}/{_stem(rel)}"), f"{self.split}/{name}/{rel}", label=label))
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
            annotations = set(_files(self._annotations()))
            images, paired = _files(self.location), set()
            keys, out = _Keys(), []
            ann_dir, img_dir = f"{self.base}annotations/{self.split}", f"{self.base}images/{self.split}"
            for rel in images:
                ann = f"{_stem(rel)}.png"
                if ann not in annotations:
                    out.append(Skip(f"{img_dir}/{rel}", f"no annotation {ann_dir}/{ann}"))
                else:
                    paired.add(ann)
                    out.append(Record(keys(_stem(rel)), f"{img_dir}/{rel}", seg=f"{ann_dir}/{ann}"))
            orphans = [Skip(f"{ann_dir}/{a}", f"annotation without an image (no {img_dir}/{_stem(a)}.*)")
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
        self._index: tuple[list[Record | Skip], list[Skip]] | None = None

    def _load(self) -> dict:
        if self._data is None:
            self._data = load_coco(self.annotation_file)
        return self._data

    def _listing(self) -> tuple[list[Record | Skip], list[Skip]]:
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
        self.orphans = self._attach(data.get("annotations", []))

    def listing(self) -> tuple[list[Record | Skip], list[Skip]]:
        """(Records of the good images and Skips of the bad, sorted by source; dropped annotations)."""
        keys, out = _Keys(), list(self.unnamed)
        for im in sorted(self.images, key=lambda im: (im.source, im.index)):
            if im.problems:
                prefix = f"image id {im.record['id']}: " if _is_int(im.record.get("id")) else ""
                out.append(Skip(im.source, prefix + "; ".join(im.problems)))
                continue
            doc = {"image": im.record, "annotations": sorted(im.annotations, key=lambda a: a["id"])}
            blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            out.append(Record(keys(_stem(im.record["file_name"])), im.source, json=blob,
                              expect_size=(im.record["width"], im.record["height"]),
                              ref=f"image id {im.record['id']} in {self.where}"))
        return out, self.orphans

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
            for im in by_id[image_id]:
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
    _check_format(fmt)
    if not root and fmt != "fashion-mnist":
        raise SourceError(f"{fmt}: a root folder is needed (datasets.<name>.root)")
    return READERS[fmt](root, split, resize_short_side)
