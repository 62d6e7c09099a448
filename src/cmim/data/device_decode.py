"""Training views decoded on the accelerator (`launch.decode: cuda`).

Why: on the CPU a sample's JPEG decode and crop resize are most of a loader worker's time, and a
fast GPU step needs many cores of them (benchmarks/README.md, "Loader, verification and
sharding"). Here the workers only read, shuffle and draw the crop boxes; the JPEG bytes and boxes
travel to the training process, which decodes the batch with nvJPEG (torchvision.io.decode_jpeg
with a list and device='cuda') and crops and resizes there.

- The boxes are the CPU paths' boxes: the same generator, the same draws, from the image size in
  the JPEG's headers (`jpeg_header`, read by PIL without decoding), which the decoded image must match.
- Images that are not 1- or 3-channel JPEGs (PNGs, CMYK) are decoded and cropped in the workers as
  `auto` does, and bytes the device decoder rejects are decoded on the CPU (`decode_tensor`: PIL
  names a corrupt sample and its shard with the usual one-line error).
- `decode_device` falls back to the worker decode, with one log line, when the job has no CUDA
  device or torchvision no CUDA decoder.

Pixels: on the CPU (device='cpu', what the tests run) this path gives exactly the `auto` path's
views. On CUDA, nvJPEG's IDCT and chroma up-sampling are not libjpeg-turbo's and the resize runs
in float, so the views differ from the CPU's by a few levels: neither that difference nor the speed
has been measured (the reference machine has no GPU).
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from cmim.data import decode as D
from cmim.data.views import ViewSpec
from cmim.errors import DataError


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, channels) of a JPEG from its headers, without decoding (PIL reads up to the frame
    header: ~15 us a file); None for other bytes, unreadable headers and a zero size."""
    if data[:2] != D.JPEG_SOI:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or not (im.width and im.height):
                return None
            return im.width, im.height, len(im.getbands())
    except (OSError, SyntaxError, ValueError):   # UnidentifiedImageError is an OSError
        return None


# ----------------------------------------------------------------------------- in the loader workers


class Encoded(NamedTuple):
    """A JPEG to decode on the device, with its crop boxes (top, left, h, w) drawn from its header size."""
    data: bytes
    boxes: list[tuple[int, int, int, int]]
    size: tuple[int, int]                  # (width, height) of the frame header
    url: str
    key: str
    label: int


class Ready(NamedTuple):
    """Views the worker decoded itself (not a 1- or 3-channel JPEG): uint8 [V, 3, S, S]."""
    views: torch.Tensor
    label: int


def payload(sample: dict, view: ViewSpec, rng: np.random.Generator, label: int) -> Encoded | Ready:
    """One sample as the workers hand it over; the same draws of `rng` as the worker decode makes."""
    _, data = D.image_field(sample)
    header = jpeg_header(data)
    if header is None or header[2] not in (1, 3):
        return Ready(D.random_crops(D.decode_tensor(sample), view, rng), label)
    width, height, _ = header
    boxes = [D.random_crop_box(width, height, view, rng) for _ in range(view.num_views)]
    return Encoded(data, boxes, (width, height), str(sample.get("__url__", "?")), str(sample.get("__key__")), label)


def collate_payloads(samples: list[Encoded | Ready], view: ViewSpec) -> dict:
    """A batch in one piece for the trip to the training process: every JPEG's bytes in one uint8
    tensor (one shared-memory block, not one per image) with their offsets, boxes int64 [J, V, 4]."""
    encoded = [(i, s) for i, s in enumerate(samples) if isinstance(s, Encoded)]
    ready = [(i, s) for i, s in enumerate(samples) if isinstance(s, Ready)]
    s = view.crop_size
    offsets = np.cumsum([0] + [len(e.data) for _, e in encoded])
    return {
        "labels": torch.tensor([x.label for x in samples], dtype=torch.int64),
        "ready": torch.stack([r.views for _, r in ready]) if ready else torch.empty((0, view.num_views, 3, s, s),
                                                                                     dtype=torch.uint8),
        "ready_index": torch.tensor([i for i, _ in ready], dtype=torch.int64),
        "bytes": torch.frombuffer(bytearray(b"".join(e.data for _, e in encoded)) or bytearray(1), dtype=torch.uint8),
        "offsets": torch.from_numpy(offsets.astype(np.int64)),
        "boxes": torch.tensor([e.boxes for _, e in encoded], dtype=torch.int64).reshape(-1, view.num_views, 4),
        "sizes": torch.tensor([e.size for _, e in encoded], dtype=torch.int64).reshape(-1, 2),
        "encoded_index": torch.tensor([i for i, _ in encoded], dtype=torch.int64),
        "names": [(e.url, e.key) for _, e in encoded],
    }


# ----------------------------------------------------------------------------- in the training process


class DeviceViews:
    """The workers' batches with their JPEGs decoded, cropped and resized on `device`:
    {"images": uint8 [B, V, 3, S, S] on device, "labels": int64 [B]} as the worker decode gives."""

    def __init__(self, batches: Iterable[dict], view: ViewSpec, device: torch.device) -> None:
        self.batches, self.view, self.device = batches, view, torch.device(device)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            yield {"images": self.images(batch), "labels": batch["labels"]}

    def images(self, batch: dict) -> torch.Tensor:
        v, s = self.view.num_views, self.view.crop_size
        out = torch.empty((len(batch["labels"]), v, 3, s, s), dtype=torch.uint8, device=self.device)
        if len(batch["ready_index"]):
            out[batch["ready_index"].to(self.device)] = batch["ready"].to(self.device, non_blocking=True)
        offsets = batch["offsets"].tolist()
        datas = [batch["bytes"][a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        decoded = self.decode(datas, batch["names"]) if datas else []
        for image, i, boxes, (w, h), (url, key) in zip(decoded, batch["encoded_index"].tolist(),
                                                         batch["boxes"].tolist(), batch["sizes"].tolist(),
                                                         batch["names"]):
            if tuple(image.shape[-2:]) != (h, w):
                raise DataError(f"{url}: sample {key}: the JPEG decodes to {image.shape[-1]}x{image.shape[-2]} "
                                f"pixels, its header says {w}x{h}; the shard is corrupt, re-run sharding")
            for j, box in enumerate(boxes):
                out[i, j] = D.resized_crop(image, tuple(box), s, self.view.interpolation)
        return out

    def decode(self, datas: list[torch.Tensor], names: list[tuple[str, str]]) -> list[torch.Tensor]:
        """uint8 [3, H, W] on the device, one call for the batch; if the device decoder rejects it, one
        image at a time, an image it rejects through the CPU decode (which names a corrupt sample)."""
        try:
            return _decode_jpegs(datas, self.device)
        except RuntimeError:
            pass
        out = []
        for data, (url, key) in zip(datas, names):
            try:
                out.append(_decode_jpegs([data], self.device)[0])
            except RuntimeError:
                sample = {"jpg": data.numpy().tobytes(), "__url__": url, "__key__": key}
                out.append(D.decode_tensor(sample).to(self.device))
        return out


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    if D.tv_decode_jpeg is None:
        raise RuntimeError("this torchvision has no image decoders")
    with warnings.catch_warnings():  # torchvision 0.29 warns of its decoders' deprecation at every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return D.tv_decode_jpeg(datas, mode=D.ImageReadMode.RGB, device=device)


@functools.cache
def _probe_jpeg() -> torch.Tensor:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, format="JPEG")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def decode_device(decode: str, device: torch.device | None, log: Callable[[str], None] = print) -> torch.device | None:
    """Where a job's training views are decoded for `launch.decode`: its CUDA device for `cuda` when
    torchvision decodes there (one tiny JPEG tries it), else None (the loader workers), said in one
    log line when `cuda` was asked for."""
    if decode != "cuda":
        return None
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        why = "the job has no CUDA device"
    else:
        try:
            _decode_jpegs([_probe_jpeg()], torch.device(device))
            return torch.device(device)
        except RuntimeError as e:
            why = f"torchvision cannot decode JPEGs on {device} ({str(e).splitlines()[0][:120]})"
    log(f"[loader] launch.decode is cuda but {why}: the loader workers decode instead (decode: auto)")
    return None
