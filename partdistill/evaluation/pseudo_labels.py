"""PNG overlays of a store's pseudo-labels, to look at what a stage wrote: each image beside its
objects' parts, coloured by their label (part_ranking: the part cluster; pixel_grouping: the k-means
cluster; object_masks: one colour per object)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from partdistill.data import masks
from partdistill.data.images import UnreadableImage, read_rgb
from partdistill.evaluation.figures import Panel, save_grid

# a part's label in the part_ranking / pixel_grouping records, and how the legend names it
LABEL_KEYS = {"label": "part", "cluster": "cluster"}


def label_map(record: dict) -> tuple[np.ndarray, dict[int, str]]:
    """[H, W] int: each pixel's part label (-1 outside every part), and the legend name of each label
    used ("part 3", "cluster 1"); records without parts label each object by its index ("object 0")."""
    out = np.full((record["height"], record["width"]), -1, np.int64)
    names = {}
    for index, obj in enumerate(record["objects"]):
        parts = obj.get("parts") or []
        if not parts:
            out[masks.decode(obj["segmentation"]).astype(bool)] = index
            names[index] = f"object {index}"
        for part in parts:
            key = next((k for k in LABEL_KEYS if k in part), None)
            label = int(part[key]) if key else 0
            out[masks.decode(part["segmentation"]).astype(bool)] = label
            names[label] = f"{LABEL_KEYS.get(key, 'part')} {label}"
    return out, names


def write_overlays(records, folder: Path, count: int, stage: str) -> list[Path]:
    """image | "<stage> labels" PNGs of the first `count` readable records, named <class>_<image_id>.png."""
    written = []
    for record in records:
        if len(written) >= count:
            break
        try:
            image = read_rgb(record["file_name"])
        except UnreadableImage:  # a moved or broken image costs its overlay, not the listing
            continue
        labels, names = label_map(record)
        path = Path(folder) / f"{record.get('class_key', 'all')}_{record['image_id']}.png"
        save_grid(path, [[Panel("image", image), Panel(f"{stage} labels", image, labels, names)]])
        written.append(path)
    return written
