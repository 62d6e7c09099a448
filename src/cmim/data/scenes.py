"""FMNIST-scenes: procedural scenes for the dense-transfer demos, written in the real ADE20K and COCO layouts.

Why: no package registry carries a real segmentation or detection set, and nothing may be
downloaded at run time, so the demo builds one from real image pieces: Fashion-MNIST items ("things",
10 classes) pasted over regions filled with texture crops ("stuff": scikit-image's bundled textures
and photos, plus a few procedural patterns). The trees use the real file layouts, so the ADE20K and
COCO readers, the sharder and the metrics run on them exactly as on the real datasets.

Guarantees:
- Deterministic: scene i of a split is a pure function of (seed, split, i) (its own
  `numpy.random.default_rng`), and every file is encoded with fixed settings, so the same arguments
  give byte-identical trees, whatever the order or number of scenes generated.
- Nothing leaks from train to val: train scenes paste items of Fashion-MNIST's train split and crop
  textures from the top half of each texture image; val scenes use the t10k split and bottom halves.
- ADE20K labels and COCO masks agree: thing pixels of the label map are exactly the union of the
  COCO masks (polygons or crowd RLE), and 0 ("other") marks the blended fringe of items and the
  fragments too small to annotate.

Without the Fashion-MNIST files the things are cv2-drawn shapes (`SHAPE_NAMES`), said in the log
and in the summary, so the generator runs anywhere (the GPU machine has no Fashion-MNIST).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cmim.data import fashion_mnist
from cmim.data.scene_masks import polygons, rle_uncompressed

LAYOUTS = ("ade20k", "coco")
SPLITS = ("train", "val")
FMNIST_SPLIT = {"train": "train", "val": "t10k"}       # where each split's things come from
TEXTURES = ("brick", "grass", "gravel")                # skimage.data grey textures
PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")  # skimage.data photos, cropped into patches
PROCEDURAL = ("stripes", "checker", "blobs")           # drawn per scene (no pool to leak from)
STUFF_NAMES = TEXTURES + PHOTOS + PROCEDURAL           # one stuff class per texture source
SHAPE_NAMES = ("circle", "square", "triangle", "star", "ring",
               "cross", "diamond", "hexagon", "crescent", "arrow")  # fallback things, 10 like Fashion-MNIST
COCO_CATEGORY_IDS = (1, 2, 3, 5, 7, 11, 13, 17, 19, 23)  # non-contiguous, like COCO's 1..90
COCO_VAL_IMAGE_ID_OFFSET = 1_000_000  # image ids unique across train and val, as in COCO

THRESHOLD = 40       # an item pixel > 40 (of 255) is the item; the visible mask starts from these
FAINT = 8            # pixels in (8, 40] are blended in and labelled 0 ("other"), like ADE's boundaries
MIN_AREA = 20        # visible pixels below this: no annotation, labelled 0
MAX_THINGS = 6
MIN_SIDE = 16        # smallest pasted item side in px; the largest is 2/3 of the scene side
CROWD_PROB = 0.1     # chance that a scene holds one tight cluster annotated as iscrowd=1 (RLE)
UNLABELLED, STUFF = -2, -1  # owner map values that are not an instance index
_SPLIT_CODE = {"train": 0, "val": 1}


# ----------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Item:
    """One pasted thing: which source image it is (what the disjointness checks read)."""
    source: str  # Fashion-MNIST split ("train" / "t10k") or "shapes"
    index: int   # index in that split; -1 for a drawn shape
    label: int   # thing class 0..9


@dataclass
class Instance:
    label: int                # thing class 0..9
    mask: np.ndarray          # bool [H, W], the visible pixels (exactly what `segmentation` decodes to)
    iscrowd: bool
    items: tuple[Item, ...]   # one item, or the members of a crowd cluster
    segmentation: list | dict  # COCO polygons [[x1, y1, ...], ...], or uncompressed RLE for a crowd


@dataclass
class Scene:
    image: np.ndarray         # uint8 [H, W, 3]
    semantic: np.ndarray      # uint8 [H, W]: 0 other, 1..S stuff, S+1..S+T things (ADE20K ids)
    instances: list[Instance]
    items: tuple[Item, ...]   # every pasted item in paste order, dropped ones included


@dataclass(frozen=True)
class Sources:
    """The pools scenes draw from, loaded once per `generate`."""
    things: str                                       # "fashion-mnist" or "shapes"
    pools: dict[str, tuple[np.ndarray, np.ndarray]]   # split -> (uint8 [N, 28, 28], int64 [N]); {} for shapes
    textures: dict[str, dict[str, np.ndarray]]        # split -> stuff name -> uint8 [h, w, 3] (its half)


@dataclass
class Paste:
    """One item placed on the canvas (what `compose` pastes, in order)."""
    values: np.ndarray  # float32 [h, w] item intensity 0..255, already scaled and flipped
    color: np.ndarray   # float32 [3] tint
    x: int              # top-left corner on the canvas (may lie partly outside)
    y: int
    owner: int          # instance index the visible pixels go to


# ----------------------------------------------------------------------------- classes


def classes(layout: str, things: str = "fashion-mnist") -> list[dict]:
    """The class list written to disk: ADE20K ids 1..K (stuff, then things) or COCO categories (things)."""
    check_layout(layout)
    if things not in ("fashion-mnist", "shapes"):
        raise ValueError(f"things must be 'fashion-mnist' or 'shapes', got {things!r}")
    thing_names = list(fashion_mnist.CLASS_NAMES if things == "fashion-mnist" else SHAPE_NAMES)
    if layout == "coco":
        return [{"id": cid, "name": name, "supercategory": "thing"}
                for cid, name in zip(COCO_CATEGORY_IDS, thing_names)]
    names = [(n, "stuff") for n in STUFF_NAMES] + [(n, "thing") for n in thing_names]
    return [{"id": i, "name": n, "kind": kind} for i, (n, kind) in enumerate(names, start=1)]


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"scene layout must be one of {list(LAYOUTS)}, got {layout!r}")


# ----------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=1)
def texture_images() -> dict[str, np.ndarray]:
    """The real texture sources, uint8 [H, W, 3] each (grey textures repeated to 3 channels)."""
    from skimage import data

    out = {}
    for name in TEXTURES + PHOTOS:
        im = getattr(data, name)()
        out[name] = np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 else im[:, :, :3]
    return out


def texture_rows(height: int, split: str) -> tuple[int, int]:
    """Rows [start, stop) of a texture image that `split` may crop from: train the top half, val the bottom."""
    half = height // 2
    return (0, half) if split == "train" else (half, height)


def load_sources(fmnist_root: str | Path | None = None, log: Callable[[str], None] = print) -> Sources:
    textures = {split: {name: im[slice(*texture_rows(im.shape[0], split))]
                        for name, im in texture_images().items()} for split in SPLITS}
    try:
        root = fashion_mnist.find_root(fmnist_root)
    except FileNotFoundError as e:
        log(f"[scenes] Fashion-MNIST not found, so the things are cv2-drawn shapes {list(SHAPE_NAMES)} ({e})")
        return Sources("shapes", {}, textures)
    pools = {split: fashion_mnist.load(root, FMNIST_SPLIT[split]) for split in SPLITS}
    log(f"[scenes] things: Fashion-MNIST from {root} (train scenes: train split, val scenes: t10k split)")
    return Sources("fashion-mnist", pools, textures)


# ----------------------------------------------------------------------------- stuff


def _regions(rng: np.random.Generator, size: int) -> np.ndarray:
    """int [H, W] region index 0..n-1, n in 1..4: wavy horizon bands or warped Voronoi cells."""
    n = int(rng.integers(1, 5))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if n == 1:
        return np.zeros((size, size), np.int64)
    if rng.random() < 0.5:
        levels = np.sort(rng.uniform(0.15, 0.85, n - 1))
        region = np.zeros((size, size), np.int64)
        for level in levels:
            slope, amp = rng.uniform(-0.3, 0.3), rng.uniform(0, 0.06)       # tilt, waviness
            freq, phase = rng.uniform(0.5, 3), rng.uniform(0, 2 * np.pi)
            region += yy > level + slope * (xx - 0.5) + amp * np.sin(2 * np.pi * freq * xx + phase)
        return region
    seeds = rng.uniform(0, 1, (n, 2))
    amp, freq, phase = rng.uniform(0, 0.08), rng.uniform(1, 3), rng.uniform(0, 2 * np.pi, 2)
    wy = yy + amp * np.sin(2 * np.pi * freq * xx + phase[0])
    wx = xx + amp * np.sin(2 * np.pi * freq * yy + phase[1])
    dist = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2  # [n, H, W]
    return dist.argmin(0)


def _crop(rng: np.random.Generator, im: np.ndarray, size: int) -> np.ndarray:
    """A random square crop of `im` resized to size x size, float32 [size, size, 3] in 0..1."""
    h, w = im.shape[:2]
    hi = min(h, w, 2 * size)
    side = int(rng.integers(min(size // 2, hi), hi + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(im[y:y + side, x:x + side], (size, size), interpolation=interp).astype(np.float32) / 255


def _procedural(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """stripes / checker / blobs in two random colours, float32 [size, size, 3] in 0..1."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
    if name == "stripes":
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(4, 12))
    elif name == "checker":
        cell = rng.uniform(4, 12)
        mix = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    else:  # blobs: smooth noise, squashed into two-tone blobs with soft edges
        grid = rng.normal(size=(max(2, size // 12),) * 2).astype(np.float32)
        mix = 1 / (1 + np.exp(-4 * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)))
    a, b = rng.uniform(0.05, 0.95, (2, 3)).astype(np.float32)
    return a * (1 - mix[..., None]) + b * mix[..., None]


def _stuff_texture(rng: np.random.Generator, sources: Sources, split: str, name: str, size: int) -> np.ndarray:
    """One region's fill: a crop or pattern with brightness/colour jitter, float32 [size, size, 3]."""
    bank = sources.textures[split]
    tex = _crop(rng, bank[name], size) if name in bank else _procedural(rng, name, size)
    gain = (rng.uniform(0.75, 1.25) * rng.uniform(0.85, 1.15, 3)).astype(np.float32)
    return tex * gain + np.float32(rng.uniform(-0.06, 0.06))


def _stuff(rng: np.random.Generator, sources: Sources, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(background float32 [H, W, 3], stuff class ids int [H, W] in 1..S)."""
    region = _regions(rng, size)
    n = int(region.max()) + 1
    stuff_cls = rng.choice(len(STUFF_NAMES), n, replace=False)  # neighbours never share a class
    background = np.empty((size, size, 3), np.float32)
    for r, c in enumerate(stuff_cls):
        inside = region == r
        background[inside] = _stuff_texture(rng, sources, split, STUFF_NAMES[c], size)[inside]
    sigma = rng.uniform(0.005, 0.03, n).astype(np.float32)  # noise level per region
    background += rng.standard_normal(background.shape, dtype=np.float32) * sigma[region][..., None]
    return background, stuff_cls[region] + 1


# ----------------------------------------------------------------------------- things


def draw_shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """A fallback thing: shape SHAPE_NAMES[label], randomly rotated and shaded, uint8 [28, 28] like Fashion-MNIST."""
    big, c = 112, 56.0
    canvas = np.zeros((big, big), np.uint8)
    r, turn = rng.uniform(34, 48), rng.uniform(0, 2 * np.pi)
    name = SHAPE_NAMES[label]

    def poly(radii, angles):
        pts = np.stack([c + radii * np.cos(angles + turn), c + radii * np.sin(angles + turn)], 1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 255, lineType=cv2.LINE_AA)

    corners = {"square": 4, "triangle": 3, "hexagon": 6}
    if name == "circle":
        cv2.circle(canvas, (56, 56), int(r), 255, -1, cv2.LINE_AA)
    elif name in corners:
        k = corners[name]
        poly(np.full(k, r), np.arange(k) * 2 * np.pi / k)
    elif name == "star":
        poly(np.tile([r, 0.45 * r], 5), np.arange(10) * np.pi / 5)
    elif name == "diamond":
        poly(r * np.array([1, 0.55, 1, 0.55]), np.arange(4) * np.pi / 2)
    elif name in ("ring", "crescent"):
        cv2.circle(canvas, (56, 56), int(r), 255, -1, cv2.LINE_AA)
        off = 0 if name == "ring" else 0.45 * r
        centre = (int(c + off * np.cos(turn)), int(c + off * np.sin(turn)))
        cv2.circle(canvas, centre, int(0.55 * r if name == "ring" else 0.85 * r), 0, -1, cv2.LINE_AA)
    elif name == "cross":
        w = 0.3 * r
        xy = np.array([(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r),
                       (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)])
        poly(np.hypot(xy[:, 0], xy[:, 1]), np.arctan2(xy[:, 1], xy[:, 0]))
    else:  # arrow
        xy = np.array([(r, 0), (0.1 * r, 0.7 * r), (0.1 * r, 0.3 * r), (-r, 0.3 * r),
                       (-r, -0.3 * r), (0.1 * r, -0.3 * r), (0.1 * r, -0.7 * r)])
        poly(np.hypot(xy[:, 0], xy[:, 1]), np.arctan2(xy[:, 1], xy[:, 0]))
    shade = 0.55 + 0.45 * np.linspace(0, 1, big, dtype=np.float32)[None, :] ** rng.uniform(0.5, 2)
    return cv2.resize(canvas * shade, (28, 28), interpolation=cv2.INTER_AREA).round().astype(np.uint8)


def _pick(rng: np.random.Generator, sources: Sources, split: str, label: int | None = None) -> tuple[Item, np.ndarray]:
    """One thing image (of class `label`, or any) from the split's pool: (Item, uint8 [28, 28])."""
    if sources.things == "shapes":
        label = int(rng.integers(len(SHAPE_NAMES))) if label is None else label
        return Item("shapes", -1, label), draw_shape(rng, label)
    images, labels = sources.pools[split]
    if label is None:
        index = int(rng.integers(len(images)))
    else:
        candidates = np.flatnonzero(labels == label)
        index = int(candidates[rng.integers(len(candidates))])
    return Item(FMNIST_SPLIT[split], index, int(labels[index])), images[index]


def _paste_for(rng: np.random.Generator, pixels: np.ndarray, side: int, x: int, y: int, owner: int) -> Paste:
    values = cv2.resize(pixels, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if rng.random() < 0.5:
        values = values[:, ::-1]
    return Paste(np.ascontiguousarray(values), rng.uniform(0.15, 1.0, 3).astype(np.float32), x, y, owner)


def _things(rng: np.random.Generator, sources: Sources, split: str, size: int):
    """Paste plan: an optional crowd cluster first, then 1-6 single items (later ones on top).

    Returns (pastes, owners) with owners[k] = (items, iscrowd) of instance k.
    """
    pastes, owners = [], []
    if rng.random() < CROWD_PROB:
        first, pixels = _pick(rng, sources, split)
        members = [(first, pixels)] + [_pick(rng, sources, split, first.label) for _ in range(int(rng.integers(2, 5)))]
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        for _, px in members:
            side = int(rng.integers(10, 19))
            x, y = np.round(rng.normal((cx, cy), 0.5 * side) - side / 2).astype(int)
            pastes.append(_paste_for(rng, px, side, int(x), int(y), len(owners)))
        owners.append((tuple(item for item, _ in members), True))
    largest = max(MIN_SIDE, round(2 * size / 3))
    for _ in range(int(rng.integers(1, MAX_THINGS + 1))):
        item, pixels = _pick(rng, sources, split)
        side = int(round(np.exp(rng.uniform(np.log(MIN_SIDE), np.log(largest)))))
        x, y = (int(v) for v in rng.integers(-side // 4, size - 3 * side // 4 + 1, 2))
        pastes.append(_paste_for(rng, pixels, side, x, y, len(owners)))
        owners.append(((item,), False))
    return pastes, owners


def compose(background: np.ndarray, pastes: list[Paste]) -> tuple[np.ndarray, np.ndarray]:
    """Paste items in order onto `background` (float [H, W, 3]); later items cover earlier ones.

    Returns (image float32 [H, W, 3], owner int64 [H, W]): the instance whose item is opaque at a pixel
    (value > THRESHOLD), UNLABELLED where an item is only blended in (FAINT < value <= THRESHOLD),
    STUFF where no item touches.
    """
    image = background.copy()
    owner = np.full(background.shape[:2], STUFF, np.int64)
    h, w = owner.shape
    for p in pastes:
        ph, pw = p.values.shape
        y0, x0, y1, x1 = max(p.y, 0), max(p.x, 0), min(p.y + ph, h), min(p.x + pw, w)
        if y0 >= y1 or x0 >= x1:
            continue
        v = p.values[y0 - p.y:y1 - p.y, x0 - p.x:x1 - p.x]
        solid = v > THRESHOLD
        alpha = np.where(solid, 1.0, np.clip((v - FAINT) / (THRESHOLD - FAINT), 0, 1))[..., None]
        rgb = p.color * (0.3 + 0.7 * v[..., None] / 255)  # tinted, keeps the item's own shading
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - alpha) + rgb * alpha
        region = owner[y0:y1, x0:x1]
        region[(v > FAINT) & ~solid] = UNLABELLED
        region[solid] = p.owner
    return image, owner


# ----------------------------------------------------------------------------- masks -> COCO


def _instances(owner: np.ndarray, plan: list) -> list[Instance]:
    """Visible instances; those below MIN_AREA are dropped and their pixels set UNLABELLED."""
    out = []
    for k, (items, iscrowd) in enumerate(plan):
        mask = owner == k
        if mask.sum() < MIN_AREA:
            owner[mask] = UNLABELLED
            continue
        segm = rle_uncompressed(mask) if iscrowd else polygons(mask)
        out.append(Instance(items[0].label, mask, iscrowd, items, segm))
    return out


# ----------------------------------------------------------------------------- one scene


def make_scene(sources: Sources, split: str, index: int, *, size: int = 96, seed: int = 0) -> Scene:
    """Scene `index` of `split`: a pure function of (sources, split, index, size, seed)."""
    if split not in SPLITS:
        raise ValueError(f"scene split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    background, stuff_ids = _stuff(rng, sources, split, size)
    pastes, plan = _things(rng, sources, split, size)
    image, owner = compose(background, pastes)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 0.01  # sensor noise over everything
    instances = _instances(owner, plan)
    semantic = np.where(owner == STUFF, stuff_ids, 0)
    for inst in instances:
        semantic[inst.mask] = len(STUFF_NAMES) + 1 + inst.label
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    items = tuple(item for items, _ in plan for item in items)
    return Scene(pixels, semantic.astype(np.uint8), instances, items)
