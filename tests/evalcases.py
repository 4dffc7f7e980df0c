"""Small hand-made evaluation cases shared by the evaluator tests: metadata, records, predictions."""
from __future__ import annotations

import numpy as np

from partdistill.data.catalog import Metadata
from partdistill.data.records import object_record, part_record
from partdistill.evaluation.samples import Prediction

META = Metadata(
    thing_classes=["cat", "car", "boat"],
    part_classes=["head", "body", "wheel", "window", "door"],
    parts_of={0: [0, 1], 1: [2, 3, 4], 2: []},
)


def grid(rows: list[str]) -> np.ndarray:
    """A label grid from strings: digits are labels, '.' is -1 (nothing)."""
    return np.array([[-1 if ch == "." else int(ch) for ch in row] for row in rows])


def record(image_id, objects, shape):
    """objects: (class, object mask, [(global part id, mask), ...])"""
    anns = [object_record(c, m, [part_record(p, pm) for p, pm in parts]) for c, m, parts in objects]
    return {"image_id": image_id, "height": shape[0], "width": shape[1], "annotations": anns}


def prediction(label_grid: np.ndarray) -> Prediction:
    """One segment per label of the grid, all with score 1."""
    labels = sorted(set(label_grid.ravel()) - {-1})
    return Prediction(np.stack([label_grid == k for k in labels]) if labels else np.zeros((0, *label_grid.shape), bool),
                      np.array(labels, np.int64), np.ones(len(labels), np.float32))


def random_objects(rng: np.random.Generator, n: int, sizes=(5, 12), coverage: float = 0.8):
    """n random one-object images of class "cat": (record, the per-pixel part grid (2 = no part), (h, w))."""
    out = []
    for i in range(n):
        h, w = rng.integers(*sizes, size=2)
        obj = rng.random((h, w)) < coverage
        part_of = rng.integers(0, 3, size=(h, w))  # 2 = no part
        parts = [(p, obj & (part_of == p)) for p in (0, 1) if (obj & (part_of == p)).any()]
        out.append((record(i, [(0, obj, parts)], (h, w)), part_of, (h, w)))
    return out
