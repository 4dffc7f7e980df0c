"""Binary masks as COCO RLE: the one encoding records, the store and predictions use."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

AREA_CHUNK = 255  # pycocotools' area() overflows on 256 or more RLEs in one call
# pycocotools' compiled decode() warns on every call under numpy 2 about its own __array__; the
# values are right (checked against numpy in the tests), so the warning is only noise to users.
warnings.filterwarnings(
    "ignore", message="__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning
)


def encode(mask: np.ndarray) -> dict:
    """A HxW boolean mask -> COCO RLE with `counts` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode(rle: dict) -> np.ndarray:
    """COCO RLE (counts as str or bytes) -> HxW boolean mask."""
    if isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def area(rles: Sequence[dict]) -> np.ndarray:
    """Pixel counts of many RLEs (chunked to stay within pycocotools' limits)."""
    out = [mask_utils.area([_bytes(r) for r in rles[i : i + AREA_CHUNK]]) for i in range(0, len(rles), AREA_CHUNK)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def union(rles: Sequence[dict]) -> dict:
    """The union of same-size RLEs, computed on the RLEs (no decoding); `counts` as str."""
    if len(rles) == 1:
        return rles[0]
    merged = mask_utils.merge([_bytes(r) for r in rles], intersect=False)
    return {"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode("ascii")}


def _bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def bbox_xyxy(mask: np.ndarray) -> list[float]:
    """Tight box [x0, y0, x1, y1] (exclusive max, as detectron2's XYXY_ABS of a mask); zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons [[x0, y0, x1, y1, ...], ...] -> HxW boolean mask (their union).

    Raises ValueError for an empty list or polygons with fewer than 3 points (degenerate).
    """
    valid = [list(map(float, p)) for p in polygons if len(p) >= 6 and len(p) % 2 == 0]
    if not valid:
        raise ValueError("no polygon with at least 3 points")
    rles = mask_utils.frPyObjects(valid, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
