"""Binary masks as COCO annotations: exact polygons, uncompressed RLE, boxes (the demo scenes' masks).

Pure functions of a bool [H, W] mask, so each is tested alone against pycocotools' rasterisation.
"""

from __future__ import annotations

import cv2
import numpy as np


def polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons whose rasterisation (pycocotools) is exactly `mask` (bool [H, W]).

    Outer contours (cv2.findContours, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE) of the mask upsampled 2x,
    mapped back through the sub-pixel centres: the outline runs 1/4 px inside the pixel edges, so
    every pixel centre of the mask lies inside, 1-px lines and single pixels included (contours
    through the pixel centres lose a half-pixel rim and whole thin parts). A polygon cannot have a
    hole, so a mask with holes is first cut into hole-free parts whose polygons union to the mask.
    """
    x, y, w, h = bbox(mask)
    offset = np.array([x, y], np.float64)
    out = []
    for part in _hole_free_parts(mask[y:y + h, x:x + w]):  # work on the box: masks are small
        up = part.astype(np.uint8).repeat(2, 0).repeat(2, 1)
        contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        # [P, 1, 2] up-pixel indices -> their centres in original pixels; >= 4 points at 2x, always
        out += [((c.reshape(-1, 2) + 0.5) / 2 + offset).reshape(-1).tolist() for c in contours if len(c) >= 3]
    return out


def _hole_free_parts(mask: np.ndarray) -> list[np.ndarray]:
    """Split `mask` between pixel columns until no part encloses background; the parts partition it.

    A cut just right of the leftmost hole column opens that hole on both sides (the hole touches the
    cut, and the far side of the cut is outside each part); a cut never creates a hole.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    holes = filled.astype(bool) & ~mask
    if not holes.any():
        return [mask]
    col = int(np.flatnonzero(holes.any(0))[0]) + 1
    left, right = mask.copy(), mask.copy()
    left[:, col:], right[:, :col] = False, False
    return _hole_free_parts(left) + _hole_free_parts(right)


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major flattened mask, starting with a zero run."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"counts": runs, "size": list(mask.shape)}


def bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of the pixels of a non-empty mask (w, h count pixels)."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
