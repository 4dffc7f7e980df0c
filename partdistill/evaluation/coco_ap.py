"""COCO-style mask AP/AR of part instances with pycocotools' COCOeval (iouType="segm").

Definitions (percent in the report):
- GT instances: for every scored object (`object_samples`: its class has parts and it has GT parts),
  one instance per part class present, its masks merged and clipped to the object; category = the
  global part id (one category "part" when `class_agnostic`).
- Predictions: every segment of the image's `Prediction` with its score, over the whole image (not
  restricted to the objects: they are instance predictions, and a part predicted where no scored
  object is counts as a false positive); category = its label, a global part id. In class-aware
  mode segments whose label is no part id are dropped (COCOeval would ignore an unknown category).
- Images: every processed record, image id = its position in processing order; records without
  scored objects still count (their predictions are false positives).
- `params.maxDets` is set to [1, 10, 100] explicitly (COCOeval's default, which the AR keys name);
  AP, AP50 and AP75 use 100. COCOeval applies maxDets per image *and category*: class-aware, up to
  100 segments of each part class of an image count; class-agnostic, 100 per image.
- Keys: AP (IoU 0.50:0.95), AP50, AP75, AR@1, AR@10, AR@100 = COCOeval stats[0, 1, 2, 6, 7, 8]
  (area range "all"), and `per_part` AP rows. No GT instance at all: every key is None
  (undefined). GT but no prediction: every key is 0.0. COCOeval's -1 (undefined) becomes None.

COCOeval's progress prints are captured and logged at DEBUG level.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from partdistill.data.catalog import Metadata
from partdistill.evaluation.samples import Prediction, class_space, object_samples

log = logging.getLogger(__name__)

MAX_DETS = [1, 10, 100]
# report key -> index into COCOeval.stats (with params.maxDets = MAX_DETS, area range "all")
STATS = {"AP": 0, "AP50": 1, "AP75": 2, "AR@1": 6, "AR@10": 7, "AR@100": 8}


@dataclass
class ImageInstances:
    """The compact per-image state: RLE counts (bytes), never dense masks."""

    size: tuple[int, int]  # height, width
    gt_categories: np.ndarray  # [G] int
    gt_areas: np.ndarray  # [G] int, pixels
    gt_counts: list[bytes]  # [G] COCO RLE counts
    dt_categories: np.ndarray  # [D] int
    dt_scores: np.ndarray  # [D] float
    dt_areas: np.ndarray  # [D] int
    dt_counts: list[bytes]  # [D]


class PartAPEvaluator:
    """reset() / process(inputs, outputs) / evaluate().

    Unlike the confusion-matrix evaluators, the state is a list of per-image instances: `merge`
    appends another process's list (concatenation, not a sum), which shifts its image ids by the
    number of images already held, so ids stay positions in the merged order.
    """

    def __init__(self, metadata: Metadata, class_agnostic: bool = False):
        _, self.parts_of, self.to_class = class_space(metadata)
        self.part_names = ["part"] if class_agnostic else list(metadata.part_classes)
        self.class_agnostic = class_agnostic
        self.reset()

    def reset(self) -> None:
        self.images: list[ImageInstances] = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        """Adds a batch: dataset records and the prediction for each (masks [N, H, W] of the image)."""
        for record, prediction in zip(inputs, outputs):
            size = (int(record["height"]), int(record["width"]))
            if prediction.masks.shape[1:] != size:
                raise ValueError(f"image {record.get('image_id')}: prediction masks {prediction.masks.shape[1:]} "
                                 f"do not match the record's height x width {size}")
            gt_categories, gt_masks = self._gt_instances(record, size)
            labels = np.asarray(prediction.labels, np.int64)
            keep = ((labels >= 0) & (labels < len(self.part_names))) | self.class_agnostic  # agnostic: keep all
            dt_masks = prediction.masks[keep]
            self.images.append(ImageInstances(
                size, gt_categories, gt_masks.sum(axis=(1, 2)), _encode(gt_masks),
                np.zeros(int(keep.sum()), np.int64) if self.class_agnostic else labels[keep],
                np.asarray(prediction.scores, np.float64)[keep], dt_masks.sum(axis=(1, 2)), _encode(dt_masks),
            ))  # fmt: skip

    def _gt_instances(self, record: dict, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """([G] categories, [G, H, W] bool masks): one per part class present in each scored object."""
        categories, full_masks = [], []
        for sample in object_samples(record, self.parts_of, self.to_class):
            y0, y1, x0, x1 = sample.box
            for local in np.unique(sample.part_local_ids):
                full = np.zeros(size, bool)
                full[y0:y1, x0:x1] = sample.part_masks[sample.part_local_ids == local].any(axis=0)
                full_masks.append(full)
                categories.append(0 if self.class_agnostic else self.parts_of[sample.object_class][local])
        masks = np.stack(full_masks) if full_masks else np.zeros((0, *size), bool)
        return np.array(categories, np.int64), masks

    def state(self) -> dict[str, list[ImageInstances]]:
        return {"images": self.images}

    def merge(self, state: dict[str, list[ImageInstances]]) -> None:
        """Appends another process's images after this one's (their ids become len(self.images) + i)."""
        self.images.extend(state["images"])

    def evaluate(self) -> dict:
        """AP, AP50, AP75, AR@1, AR@10, AR@100 (percent; see the module docstring for None and 0)."""
        num_gt = sum(len(im.gt_categories) for im in self.images)
        num_dt = sum(len(im.dt_categories) for im in self.images)
        out = {"images": len(self.images), "gt_instances": num_gt, "predictions": num_dt}
        if num_gt == 0 or num_dt == 0:
            value = None if num_gt == 0 else 0.0
            return {**{k: value for k in STATS}, **out, "per_part": self._per_part(None)}
        coco_eval = self._run_cocoeval()
        stats = {k: _percent(coco_eval.stats[i]) for k, i in STATS.items()}
        return {**stats, **out, "per_part": self._per_part(coco_eval.eval["precision"])}

    def _run_cocoeval(self) -> COCOeval:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            coco_eval = COCOeval(self._coco(dt=False), self._coco(dt=True), iouType="segm")
            coco_eval.params.maxDets = list(MAX_DETS)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        log.debug("COCOeval output:\n%s", printed.getvalue())
        return coco_eval

    def _coco(self, dt: bool) -> COCO:
        """The GT (dt=False) or prediction (dt=True) side as an in-memory COCO object."""
        images, anns = [], []
        for image_id, im in enumerate(self.images):
            images.append({"id": image_id, "height": im.size[0], "width": im.size[1]})
            if dt:
                cats, areas, counts = im.dt_categories, im.dt_areas, im.dt_counts
            else:
                cats, areas, counts = im.gt_categories, im.gt_areas, im.gt_counts
            for i, (cat, area, count) in enumerate(zip(cats, areas, counts)):
                ann = {"id": len(anns) + 1,  # COCOeval treats a match with id 0 as no match
                       "image_id": image_id, "category_id": int(cat), "area": float(area),
                       "segmentation": {"size": list(im.size), "counts": count}, "iscrowd": 0}
                if dt:
                    ann["score"] = float(im.dt_scores[i])
                anns.append(ann)
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": k, "name": n} for k, n in enumerate(self.part_names)]}
        coco.createIndex()
        return coco

    def _per_part(self, precision: np.ndarray | None) -> list[dict]:
        """One row per category: GT instances and AP (precision [T, R, K, A, M] from COCOeval)."""
        counts = np.bincount(np.concatenate([im.gt_categories for im in self.images] + [np.zeros(0, np.int64)]),
                             minlength=len(self.part_names))
        rows = []
        for k, name in enumerate(self.part_names):
            ap = None
            if precision is not None:
                valid = precision[:, :, k, 0, -1]
                ap = _percent(valid[valid > -1].mean()) if (valid > -1).any() else None
            elif counts[k]:
                ap = 0.0
            rows.append({"part": name, "gt_instances": int(counts[k]), "AP": ap})
        return rows


def _encode(masks: np.ndarray) -> list[bytes]:
    """[N, H, W] bool -> N COCO RLE counts (bytes)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(masks.transpose(1, 2, 0).astype(np.uint8, order="F"))  # encode wants [H, W, N]
    return [r["counts"] for r in rles]


def _percent(value: float) -> float | None:
    return None if value < 0 else 100.0 * float(value)
