"""Photo-like JPEGs for the loader's benchmarks and decoder tests, generated, never downloaded.

Why not noise or flat colours: a JPEG decoder's cost and its rounding differences depend on what
the image holds (edges, texture, smooth skies, chroma detail), and uniform noise or a flat fill
compresses like no camera picture. Each image is a random crop of one of scikit-image's bundled
photos (the package is already a dependency, for the demo scenes), resized to the requested size,
with a per-channel gain, a faint texture and sensor-like noise, then encoded by PIL with a
camera-like quality (85-95) and 4:2:0 chroma subsampling, without EXIF. A pure function of its arguments.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
           "retina")
TEXTURES = ("brick", "grass", "gravel")
# ImageNet's most common shapes (its mean is about 400 x 350; 500 x 375 and 375 x 500 are the mode)
IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (400, 300), (640, 480), (500, 500))


@functools.cache
def _source(name: str) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)())


def photo(width: int, height: int, seed: int, *, grey: bool = False) -> Image.Image:
    """A width x height RGB (or L) image cut from a real photo, with texture and noise."""
    rng = np.random.default_rng([seed, width, height, int(grey)])
    src = _source(SOURCES[int(rng.integers(len(SOURCES)))])
    sh, sw = src.shape[:2]
    aspect = width / height                            # crop at the target's aspect, 1-2x its size where the
    cw = min(int(width * rng.uniform(1.0, 2.0)), sw, int(sh * aspect))  # source allows: little up-sampling
    cw = max(8, cw)
    ch = max(8, min(sh, int(cw / aspect)))
    top, left = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = Image.fromarray(src[top:top + ch, left:left + cw]).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    pixels = pixels * rng.uniform(0.8, 1.2, size=3)    # per-channel gain: another white balance
    texture = _source(TEXTURES[int(rng.integers(len(TEXTURES)))]).astype(np.float32)
    ty, tx = int(rng.integers(0, max(1, 512 - height))), int(rng.integers(0, max(1, 512 - width)))
    tile = np.resize(texture[ty:ty + height, tx:tx + width], (height, width))
    pixels = pixels + rng.uniform(0.1, 0.3) * (tile[..., None] - tile.mean())
    pixels = pixels + rng.normal(0.0, rng.uniform(2.0, 5.0), size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image.convert("L") if grey else image


def photo_jpeg(width: int, height: int, seed: int, *, grey: bool = False, quality: int | None = None) -> bytes:
    """`photo` as JPEG bytes (quality 85-95 drawn from the seed unless given; 4:2:0; no EXIF)."""
    if quality is None:
        quality = int(np.random.default_rng([seed, 99]).integers(85, 96))
    buf = io.BytesIO()
    photo(width, height, seed, grey=grey).save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def image_folder(root: str | Path, split: str, count: int, *, classes: int = 10, grey_every: int = 50,
                 sizes: tuple[tuple[int, int], ...] = IMAGENET_SIZES, seed: int = 0) -> list[Path]:
    """`count` JPEGs in <root>/<split>/<class>/<i>.JPEG (torchvision's ImageFolder layout, cmim's
    `imagefolder` format): sizes cycle through `sizes`, every `grey_every`-th image is greyscale
    (ImageNet holds about 2%). Returns the files in order."""
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        path = Path(root) / split / f"class{i % classes:03d}" / f"{i:07d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_jpeg(w, h, seed * 1_000_003 + i, grey=grey_every > 0 and i % grey_every == 0))
        paths.append(path)
    return paths
