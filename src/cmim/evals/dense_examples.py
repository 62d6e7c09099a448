"""Example predictions of the dense tasks as one PNG: a row per val image, image | ground truth |
prediction, for the report (results/eval/<run>/{ade20k,coco}_examples.png).

Colours are a fixed palette (class k always has the same colour, in every run and every file), so
two runs' examples can be compared side by side. Drawn with PIL only; written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cmim import io

TILE = 192              # the long side of each drawn tile, px (small demo scenes are enlarged, nearest)
GAP = 4
HEADER = 18
IGNORE_COLOUR = (0, 0, 0)
MASK_ALPHA = 0.5
CAPTION_BACKGROUND = (0, 0, 0)


def palette(n: int) -> np.ndarray:
    """uint8 [n, 3]: distinct, fixed colours (golden-ratio hues, two brightness levels)."""
    out = np.zeros((n, 3), np.uint8)
    for k in range(n):
        h = (k * 0.618033988749895) % 1.0
        v = 1.0 if k % 2 == 0 else 0.7
        out[k] = _hsv_to_rgb(h, 0.75, v)
    return out


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def colour_labels(label: np.ndarray, colours: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """int [H, W] class map -> uint8 [H, W, 3]; ignored pixels black."""
    out = np.zeros((*label.shape, 3), np.uint8)
    valid = (label != ignore_index) & (label >= 0) & (label < len(colours))
    out[valid] = colours[label[valid]]
    out[label == ignore_index] = IGNORE_COLOUR
    return out


def draw_instances(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                   colours: np.ndarray, scale: float = 1.0, captions: list[str] | None = None) -> Image.Image:
    """uint8 [H, W, 3] + bool masks [N, H, W] + xyxy boxes [N, 4] (pixels) + labels [N] (0-based
    colour index) -> the image, masks blended in, box outlines, enlarged by `scale` (nearest); with
    `captions`, each box's text on a dark strip at its top-left corner (moved left to stay inside)."""
    canvas = image.astype(np.float32)
    for mask, label in zip(masks, labels):
        canvas[mask] = (1 - MASK_ALPHA) * canvas[mask] + MASK_ALPHA * colours[label]
    im = enlarge(canvas.clip(0, 255).astype(np.uint8), scale)
    draw = ImageDraw.Draw(im)
    for box, label in zip(boxes, labels):
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=tuple(int(c) for c in colours[label]),
                       width=2)
    for box, label, text in zip(boxes, labels, captions or []):
        left, top, right, bottom = draw.textbbox((0, 0), text)
        x = max(0.0, min(float(box[0]) * scale, im.width - right - 4)) + 2   # kept inside the tile
        y = max(0.0, float(box[1]) * scale) + 1
        draw.rectangle([x + left - 2, y + top - 1, x + right + 1, y + bottom + 1], fill=CAPTION_BACKGROUND)
        draw.text((x, y), text, fill=tuple(int(c) for c in colours[label]))
    return im


def enlarge(array: np.ndarray, scale: float) -> Image.Image:
    """uint8 [H, W, 3] -> a PIL image enlarged by `scale` (nearest: label maps stay crisp)."""
    im = Image.fromarray(array)
    if scale != 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.NEAREST)
    return im


def tile_scale(height: int, width: int, tile: int = TILE) -> float:
    """The factor that brings the long side of an image to `tile` pixels."""
    return tile / max(height, width)


def write_rows(path: Path, rows: list[list[Image.Image]], titles: list[str]) -> None:
    """Tiles in rows (each row: one image's panels) under a header of column titles -> PNG, atomically.
    No rows (an empty val split): a header-only image, so the declared output always exists."""
    cols = max([len(r) for r in rows] + [len(titles)])
    width = max([sum(t.width for t in r) + GAP * (len(r) - 1) for r in rows] + [cols * 64])
    heights = [max(t.height for t in r) for r in rows]
    sheet = Image.new("RGB", (width + 2 * GAP, HEADER + sum(heights) + GAP * (len(rows) + 1)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    col_width = (rows[0][0].width + GAP) if rows else width // cols
    for c, title in enumerate(titles):
        draw.text((GAP + c * col_width, 3), title, fill=(0, 0, 0))
    y = HEADER
    for row, h in zip(rows, heights):
        x = GAP
        for tile in row:
            sheet.paste(tile, (x, y))
            x += tile.width + GAP
        y += h + GAP
    with io.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
