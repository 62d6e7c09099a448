"""One source sample and its bytes as shard fields: the records readers list, and the image policy.

A reader lists a split as `Record`s (paths and labels only, never image bytes) and `build_sample`
turns one record into a `Sample` (webdataset field name -> bytes) or a `Skip` (what was wrong with
it), in the sharder's worker processes.

Image policy (DESIGN section 6): every image is fully decoded once to prove it is readable. JPEG and
PNG bytes are stored exactly as given; what decoders commonly reject (CMYK / 16-bit / transparent
palettes, BMP, GIF, WEBP, TIFF, ...) is converted, stored and recorded; `resize_short_side`
re-encodes large images once. `Sample.source` and `Skip.source` are relative to the reader's root,
so a manifest does not depend on where the data lives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

JPEG_QUALITY = 95           # for every re-encoded JPEG (converted JPEG sources, resized images)
FASHION_MNIST_PAD = 2       # 28 px -> 32 px, so a 4-px (or 8-, 16-px) patch grid tiles the image
_KEEP_MODES = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "L", "P"}}  # stored as given (P: if opaque)
_FIELD = {"JPEG": "jpg", "PNG": "png"}


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
