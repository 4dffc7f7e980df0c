"""What the evaluators score: ground-truth objects with parts, and predictions as label maps.

A sample is one ground-truth object with at least one part; everything is cropped to the object's
box so the work is proportional to object pixels, not image pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from partdistill.data import masks
from partdistill.data.catalog import Metadata


@dataclass
class Prediction:
    """Segments predicted for one image: masks [N, H, W] bool, labels [N] int >= 0, scores [N]."""

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, height: int, width: int) -> "Prediction":
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def label_map(self) -> np.ndarray:
        """[H, W] int: the label of the highest-scoring segment covering each pixel, -1 where none does."""
        out = np.full(self.masks.shape[1:], -1, np.int64)
        for i in np.argsort(self.scores, kind="stable"):  # ascending: higher scores overwrite
            out[self.masks[i]] = self.labels[i]
        return out

    def winner_map(self) -> np.ndarray:
        """[H, W] int: the index of the highest-scoring segment covering each pixel, -1 where none does."""
        out = np.full(self.masks.shape[1:], -1, np.int64)
        for i in np.argsort(self.scores, kind="stable"):
            out[self.masks[i]] = i
        return out


@dataclass
class ObjectSample:
    """One GT object, cropped to its box: mask, GT part map (local part ids, background = n_parts)."""

    object_class: int  # in the evaluator's class space (e.g. synset or supercategory)
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 of the crop in the image
    mask: np.ndarray  # [h, w] bool
    part_map: np.ndarray  # [h, w] int: local part index, n_parts for object pixels in no GT part
    part_masks: np.ndarray  # [P, h, w] bool, one per GT part present (merged per part class)
    part_local_ids: np.ndarray  # [P] local part index of each part mask
    num_parts: int  # parts of the object's class

    def crop(self, image_map: np.ndarray) -> np.ndarray:
        y0, y1, x0, x1 = self.box
        return image_map[..., y0:y1, x0:x1]


def class_space(metadata: Metadata, object_class: str = "synset") -> tuple[list[str], dict[int, list[int]], dict[int, int]]:
    """(class names, class -> its global part ids, record category -> class) for the chosen object classes.

    `supercategory` (PartImageNet) groups the synsets by their supercategory, whose part set they share.
    """
    if object_class == "supercategory":
        supers = metadata.extra["supercategories"]
        of_class = metadata.extra["supercategory_of"]
        to_class = {c: supers.index(of_class[c]) for c in range(len(metadata.thing_classes))}
        parts = {supers.index(of_class[c]): metadata.parts_of[c] for c in range(len(metadata.thing_classes))}
        return list(supers), {k: parts.get(k, []) for k in range(len(supers))}, to_class
    return list(metadata.thing_classes), dict(metadata.parts_of), {c: c for c in range(len(metadata.thing_classes))}


def object_samples(record: dict, parts_of: dict[int, list[int]], to_class: dict[int, int]) -> list[ObjectSample]:
    """The scored objects of a record: those whose class has parts and whose annotation has parts."""
    samples = []
    for obj in record.get("annotations", []):
        cls = to_class[obj["category_id"]]
        class_parts = parts_of.get(cls, [])
        if not class_parts or not obj["parts"]:
            continue
        full = masks.decode(obj["segmentation"])
        ys, xs = np.nonzero(full)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        mask = full[y0:y1, x0:x1]
        local = {g: i for i, g in enumerate(class_parts)}
        part_map = np.full(mask.shape, len(class_parts), np.int64)
        part_masks, local_ids = [], []
        for part in obj["parts"]:
            if part["category_id"] not in local:
                continue
            pm = masks.decode(part["segmentation"])[y0:y1, x0:x1] & mask
            part_map[pm] = local[part["category_id"]]  # later parts overwrite overlaps, as the paper's code
            part_masks.append(pm)
            local_ids.append(local[part["category_id"]])
        if not part_masks:
            continue
        samples.append(ObjectSample(cls, (int(y0), int(y1), int(x0), int(x1)), mask, part_map,
                                    np.stack(part_masks), np.array(local_ids), len(class_parts)))
    return samples


def scored_pixels(
    inputs: Sequence[dict], outputs: Sequence[Prediction], parts_of: dict[int, list[int]], to_class: dict[int, int]
) -> Iterator[tuple[ObjectSample, np.ndarray, np.ndarray]]:
    """Per scored object: (sample, predicted label of each object pixel (-1 = none), its GT local part
    (sample.num_parts = in no GT part)). The label map of an image is made once, for all its objects."""
    for record, prediction in zip(inputs, outputs):
        samples = object_samples(record, parts_of, to_class)
        if not samples:
            continue
        labels = prediction.label_map()
        for sample in samples:
            yield sample, sample.crop(labels)[sample.mask], sample.part_map[sample.mask]
