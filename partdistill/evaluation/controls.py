"""Reference points for unsupervised part mIoU, as prediction files any method's predictions are scored beside.

- `random_cells`: each ground-truth object cut into `k` cells (every object pixel goes to the nearest of
  `k` pixels drawn at random inside the object), the cells labelled by a random permutation of 0..k-1.
  It has the object mask and the number of part clusters, and nothing else: a method that learned
  nothing about parts scores about this.
- `oracle_parts`: the ground-truth parts themselves (label = part class): 100 by construction, a check
  that the evaluator and the data agree.
Both return records of the saved-predictions format (image_id, segmentation RLE, label, score).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from partdistill.data import masks


def random_cells(records: Iterable[dict], k: int, seed: int) -> list[dict]:
    """Every object of every record cut into (at most) `k` randomly seeded cells with random labels."""
    rng = np.random.default_rng(seed)
    predictions = []
    for record in records:
        for annotation in record.get("annotations", []):
            mask = masks.decode(annotation["segmentation"]).astype(bool)
            ys, xs = np.nonzero(mask)
            if not len(ys):
                continue
            seeds = rng.choice(len(ys), size=min(k, len(ys)), replace=False)
            # [N, k] squared distances of the object's pixels to the seeds; the nearest seed is the cell
            d = (ys[:, None] - ys[seeds][None]) ** 2 + (xs[:, None] - xs[seeds][None]) ** 2
            cell = d.argmin(1)
            labels = rng.permutation(k)[: len(seeds)]
            for c, label in enumerate(labels):
                segment = np.zeros_like(mask)
                segment[ys[cell == c], xs[cell == c]] = True
                predictions.append({"image_id": record["image_id"], "segmentation": masks.encode(segment),
                                    "label": int(label), "score": 1.0})
    return predictions


def oracle_parts(records: Iterable[dict]) -> list[dict]:
    """The ground-truth parts of every object as predictions labelled with their part class."""
    return [{"image_id": record["image_id"], "segmentation": part["segmentation"], "label": int(part["category_id"]),
             "score": 1.0}
            for record in records for annotation in record.get("annotations", []) for part in annotation.get("parts", [])]
