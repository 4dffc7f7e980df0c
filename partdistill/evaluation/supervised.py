"""Supervised part mIoU (finetune stage): predicted labels are the dataset's own global part ids.

Definitions (percent in the report):
- Every GT object with at least one GT part is a sample; predictions count only inside its mask.
- One global confusion matrix `conf[pred, gt]` of shape (P + 1) x (P + 1) over the P part classes,
  index P = background. GT background = object pixels in no GT part; predicted background = object
  pixels no segment covers, or whose winning label is not a part id (outside 0..P-1).
- Per part p: tp = conf[p, p], gt = conf[:, p].sum() (misses count), pred = conf[p, :].sum()
  (spills onto GT background or other parts count); IoU = tp / (gt + pred - tp), Acc = tp / gt.
- mIoU = mean IoU over parts with gt + pred > 0; mACC = mean Acc over parts with gt > 0; background
  is never averaged. pixel_acc = trace / all scored pixels (background pixels included).

The paper's `Supervised_mIOU_Evaluator` averaged entries named after `thing_classes` (objects), so
for Pascal and Cityscapes only the first 20 / 5 part ids entered its mIoU (method_reference.md 4.3);
here every part class is averaged and the rows carry the part names.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from partdistill.data.catalog import Metadata
from partdistill.evaluation.part_miou import mean_defined
from partdistill.evaluation.samples import Prediction, class_space, scored_pixels


class SupervisedMIoUEvaluator:
    """reset() / process(inputs, outputs) / evaluate(); the state merges across processes by summing.

    `object_class` only chooses which objects are scored (classes with parts, see `class_space`);
    the confusion matrix is over part classes and does not depend on it.
    """

    def __init__(self, metadata: Metadata, object_class: str = "synset"):
        _, self.parts_of, self.to_class = class_space(metadata, object_class)
        self.part_names = list(metadata.part_classes)
        num_parts = len(self.part_names)
        # object class -> the global id of each local part index; the sample's no-part index
        # (= its number of parts) is last and maps to background (= num_parts)
        self.local_to_global = {c: np.array(list(p) + [num_parts], np.int64) for c, p in self.parts_of.items()}
        self.reset()

    def reset(self) -> None:
        n = len(self.part_names) + 1
        self.conf = np.zeros((n, n), np.int64)  # [pred, gt]
        self.objects = np.zeros((), np.int64)

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        """Adds a batch: dataset records and the prediction for each (one bincount for the batch)."""
        background = len(self.part_names)
        rows, cols = [], []
        for sample, pred, gt in scored_pixels(inputs, outputs, self.parts_of, self.to_class):
            cols.append(self.local_to_global[sample.object_class][gt])
            rows.append(np.where((pred >= 0) & (pred < background), pred, background))
            self.objects += 1
        if not rows:
            return
        n = background + 1
        flat = np.concatenate(rows) * n + np.concatenate(cols)
        self.conf += np.bincount(flat, minlength=n * n).reshape(n, n)

    def state(self) -> dict[str, np.ndarray]:
        return {"conf": self.conf, "objects": self.objects}

    def merge(self, state: dict[str, np.ndarray]) -> None:
        """Adds another process's state (DDP ranks, SLURM tasks)."""
        self.conf += state["conf"]
        self.objects += state["objects"]

    def evaluate(self) -> dict:
        """mIoU, mACC, pixel_acc (percent; None where no part qualifies) and one row per part class."""
        tp = np.diag(self.conf)[:-1]
        gt = self.conf[:, :-1].sum(axis=0)
        pred = self.conf[:-1, :].sum(axis=1)
        rows = [_part_row(name, int(tp[p]), int(gt[p]), int(pred[p])) for p, name in enumerate(self.part_names)]
        total = int(self.conf.sum())
        return {
            "mIoU": mean_defined(r["IoU"] for r in rows),
            "mACC": mean_defined(r["Acc"] for r in rows),
            "pixel_acc": 100.0 * int(np.trace(self.conf)) / total if total > 0 else None,
            "objects": int(self.objects),
            "per_part": rows,
        }


def _part_row(part: str, tp: int, gt: int, pred: int) -> dict:
    return {
        "part": part, "tp": tp, "gt": gt, "pred": pred,
        "IoU": 100.0 * tp / (gt + pred - tp) if gt + pred > 0 else None,
        "Acc": 100.0 * tp / gt if gt > 0 else None,
    }  # fmt: skip

