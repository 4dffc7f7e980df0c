"""COCO-style JSON shared by PartImageNet and the synthetic data set: reading, masks, atomic writing."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from partdistill.data import masks


def read_json(path: Path) -> dict:
    """The parsed file; a clear error naming the file when it is not valid COCO-style JSON."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-extract or re-download it") from exc
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise ValueError(f"{path} lacks the COCO keys {missing}; is it the right annotation file?")
    return data


def annotations_by_image(data: dict) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return grouped


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, or RLE for crowds) -> [H, W] bool; ValueError if empty."""
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, height, width)
        mask = masks.decode(rle)
    else:
        mask = masks.polygons_to_mask(segmentation, height, width)
    if not mask.any():
        raise ValueError("the segmentation covers no pixel")
    return mask


def polygon_annotation(ann_id: int, image_id: int, category_id: int, polygon: list[float], height: int, width: int, **extra) -> dict:
    """A COCO annotation of one polygon, with its xywh box and area as COCO computes them."""
    rle = mask_utils.frPyObjects([polygon], height, width)[0]
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": [polygon],
        "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)), "iscrowd": 0, **extra,
    }
