"""Shard image bytes -> pixels, and the random resized crops of the training views, on the CPU.

Two ways, chosen per job by `launch.decode` (cmim.data.device_decode maps it):
- `pil`: PIL decodes and PIL crops and resizes: exactly the pixels of torchvision's PIL transforms,
  which the official MAE / CAN / CMAE code runs (test_views_pil.py checks the equality).
- `auto` (default): JPEGs are decoded by torchvision.io.decode_jpeg and every crop is resized by
  torch's antialiased uint8 kernel on the channels-last pixels the decoder returns. Why: on the
  reference machine (2-core AMD EPYC) PIL's bicubic resize of a crop to 224 px was the largest cost
  of a training sample (0.77 ms of ~1.8), torch's 0.18 ms; decode_jpeg 0.49 ms against PIL's 0.64.
  The decoded pixels are PIL's, bit for bit (both are libjpeg-turbo with the same settings; checked
  on 4:2:0 / 4:2:2 / 4:4:4, progressive and grey JPEGs in tests/data/test_decode.py); the resized
  crops differ from PIL's in about 2.5% of the pixels, almost all by one level (bicubic up-sampling
  of a small crop: at most 8; bilinear at most 2; mean |difference| 0.03 levels), bounded by the test.
  The crop boxes are the same: the same draws of the same generator, from the same image size.

Whatever the way, PNGs and anything decode_jpeg does not give as 1 or 3 channels go the old way
(8-bit PNGs through OpenCV, the rest through PIL), and bytes that no decoder reads fail with the same
one-line error naming the shard and the sample.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cmim.data.views import ViewSpec
from cmim.errors import DataError

try:
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode_jpeg
except ImportError:  # a torchvision that dropped its decoders: PIL decodes (the same pixels, slower)
    tv_decode_jpeg = ImageReadMode = None

IMAGE_FIELDS = ("jpg", "jpeg", "png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


# ----------------------------------------------------------------------------- bytes -> pixels


def image_field(sample: dict) -> tuple[str, bytes]:
    """The sample's image field and its bytes (DataError naming the shard when it has none)."""
    for field in IMAGE_FIELDS:
        if field in sample:
            return field, sample[field]
    raise DataError(f"{sample.get('__url__', '?')}: sample {sample.get('__key__')} has no image field "
                    f"({', '.join(IMAGE_FIELDS)}); fields: {sorted(k for k in sample if not k.startswith('__'))}")


def _decode_png_fast(data: bytes) -> np.ndarray | None:
    """8-bit grey / RGB PNGs (what the sharder stores) through OpenCV as RGB [H, W, 3], about 10x cheaper
    than PIL on small images and the same pixels (PNG is lossless); None for anything else (alpha,
    16 bit): PIL decodes those."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint8:
        return None
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] != 3:
        return None
    return np.ascontiguousarray(array[:, :, ::-1])


def decode_pil(sample: dict) -> Image.Image:
    """The sample's image as an RGB PIL image, through PIL (8-bit PNGs through OpenCV: the same pixels)."""
    field, data = image_field(sample)
    try:
        if data[:8] == PNG_SIGNATURE:
            fast = _decode_png_fast(data)
            if fast is not None:
                return Image.fromarray(fast)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as e:
        raise DataError(f"{sample.get('__url__', '?')}: sample {sample.get('__key__')}: "
                        f"cannot decode {field}: {e}; the shard is corrupt, re-run sharding") from e


def _decode_jpeg_cpu(data: bytes) -> torch.Tensor | None:
    """uint8 [3, H, W] (channels-last memory, as libjpeg-turbo writes it), or None: a JPEG of other than
    1 or 3 channels (CMYK), bytes decode_jpeg rejects (PIL then decodes them or names the fault: on
    corrupted JPEGs the two agree on what to reject, OpenCV's imdecode does not), or a torchvision
    without its image decoders (deprecated in 0.29 in favour of TorchCodec; pinned in pyproject.toml)."""
    if tv_decode_jpeg is None:
        return None
    try:
        with warnings.catch_warnings():  # torchvision 0.29 warns of the deprecation at every call
            warnings.simplefilter("ignore", DeprecationWarning)
            image = tv_decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None
    if image.shape[0] == 1:  # grey: replicated, as PIL's convert("RGB")
        return image[0, :, :, None].expand(-1, -1, 3).contiguous().permute(2, 0, 1)
    return image if image.shape[0] == 3 else None


def decode_tensor(sample: dict) -> torch.Tensor:
    """The sample's image as uint8 [3, H, W] in channels-last memory (what torch's resize is fast on):
    JPEGs through torchvision's decoder (PIL's pixels), the rest as `decode_pil` decodes them."""
    _, data = image_field(sample)
    if data[:2] == JPEG_SOI:
        image = _decode_jpeg_cpu(data)
        if image is not None:
            return image
    elif data[:8] == PNG_SIGNATURE:
        array = _decode_png_fast(data)
        if array is not None:
            return torch.from_numpy(array).permute(2, 0, 1)
    return torch.from_numpy(np.array(decode_pil(sample), dtype=np.uint8)).permute(2, 0, 1)


def decode_image(sample: dict) -> Image.Image:
    """The sample's image as an RGB PIL image: `decode_tensor`'s pixels (PIL's, decoded faster)."""
    return Image.fromarray(decode_tensor(sample).permute(1, 2, 0).numpy())


# ----------------------------------------------------------------------------- crops


def random_crop_box(width: int, height: int, view: ViewSpec, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): area and log-aspect uniform, 10 tries, then centre."""
    area = width * height
    log_ratio = (math.log(view.ratio[0]), math.log(view.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*view.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the largest centred box within the ratio range
    if in_ratio < view.ratio[0]:
        w, h = width, int(round(width / view.ratio[0]))
    elif in_ratio > view.ratio[1]:
        w, h = int(round(height * view.ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: int, interpolation: str) -> torch.Tensor:
    """uint8 [3, size, size]: the box (top, left, h, w) of a uint8 [3, H, W] image, resized with
    antialiasing (PIL's filter; uint8 in and out on the CPU, through float on other devices)."""
    top, left, h, w = box
    crop = image[:, top:top + h, left:left + w]
    return F.resize(crop, [size, size], interpolation=INTERP[interpolation], antialias=True)


def random_crops(image: torch.Tensor, view: ViewSpec, rng: np.random.Generator) -> torch.Tensor:
    """uint8 [V, 3, S, S]: the view's V random resized crops of a uint8 [3, H, W] image."""
    height, width = image.shape[-2:]
    return torch.stack([resized_crop(image, random_crop_box(width, height, view, rng), view.crop_size,
                                     view.interpolation) for _ in range(view.num_views)])
