"""PNG overlays of a store's pseudo-labels, to look at what a stage wrote: each image beside its
objects' parts, coloured by their label (part_ranking: the part cluster; pixel_grouping: the k-means
cluster; object_masks: one colour per object)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from partdistill.data import masks
from partdistill.data.images import read_rgb
from partdistill.evaluation.report import overlay, palette
from partdistill.io import replace_atomically

LABEL_KEYS = ("label", "cluster")  # a part's label in the part_ranking / pixel_grouping records


def label_map(record: dict) -> tuple[np.ndarray, int]:
    """[H, W] int: each pixel's part label (-1 outside every part), and the number of labels used;
    records without parts colour each object by its index."""
    out = np.full((record["height"], record["width"]), -1, np.int64)
    top = 0
    for index, obj in enumerate(record["objects"]):
        parts = obj.get("parts") or []
        if not parts:
            out[masks.decode(obj["segmentation"]).astype(bool)] = index
            top = max(top, index + 1)
        for part in parts:
            label = next((int(part[k]) for k in LABEL_KEYS if k in part), 0)
            out[masks.decode(part["segmentation"]).astype(bool)] = label
            top = max(top, label + 1)
    return out, top


def write_overlays(records, folder: Path, count: int) -> list[Path]:
    """image | labelled parts PNGs of the first `count` readable records, named <class>_<image_id>.png."""
    written = []
    for record in records:
        if len(written) >= count:
            break
        try:
            image = np.asarray(read_rgb(record["file_name"]))
        except OSError:
            continue
        labels, top = label_map(record)
        panel = np.concatenate([image, overlay(image, labels, palette(max(top, 8)))], axis=1)
        path = Path(folder) / f"{record.get('class_key', 'all')}_{record['image_id']}.png"
        replace_atomically(path, lambda tmp: Image.fromarray(panel).save(tmp, format="PNG"))
        written.append(path)
    return written
