"""Unsupervised part mIoU: predicted labels mapped to GT parts per object class, then IoU per part.

Definitions (percent in the report):
- Every GT object with at least one GT part is a sample; predictions count only inside its mask.
- Per object class c, `counts[c, row, col]` accumulates pixels: row 0 = no prediction, row k+1 =
  predicted label k; col p < n_c = GT part p of c (local index), col P = object pixels in no GT part.
- The mapping (learned on the match split's counts) sends each label to one GT part of c or to
  background: `majority` (most overlapping part; ties go to the lowest part id; no overlap ->
  background), `hungarian` (one-to-one on the overlaps; unassigned or zero-overlap -> background),
  `identity` (labels are the dataset's global part ids).
- Per (c, p): tp, gt = all GT pixels of p, pred = all pixels mapped to p inside the objects (object
  pixels outside GT parts included); IoU = tp / (gt + pred - tp), Acc = tp / gt, IoPred = tp / pred.
- C-mIoU = mean over classes of the mean IoU over their parts with gt + pred > 0 (classes without
  such a part are left out); A-mIoU = mean over all (c, p) with gt + pred > 0; mACC over gt > 0 and
  mIoPred over pred > 0 likewise.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from partdistill.data.catalog import Metadata
from partdistill.evaluation.samples import Prediction, class_space, scored_pixels

MAPPINGS = ("majority", "hungarian", "identity")


class PartMIoUEvaluator:
    """reset() / process(inputs, outputs) / evaluate(); the state merges across processes by summing."""

    def __init__(self, metadata: Metadata, mapping: str = "majority", object_class: str = "synset"):
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, not {mapping!r}")
        self.class_names, self.parts_of, self.to_class = class_space(metadata, object_class)
        self.part_names = list(metadata.part_classes)
        self.mapping = mapping
        self.max_parts = max([len(p) for p in self.parts_of.values()] + [1])
        self.reset()

    def reset(self) -> None:
        self.counts = np.zeros((len(self.class_names), 1, self.max_parts + 1), np.int64)
        self.objects = np.zeros(len(self.class_names), np.int64)

    # -- accumulation -------------------------------------------------------------------------
    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        """Adds a batch: dataset records and the prediction for each (one bincount for the batch)."""
        classes, rows, cols = [], [], []
        for sample, predicted, gt in scored_pixels(inputs, outputs, self.parts_of, self.to_class):
            cols.append(np.where(gt == sample.num_parts, self.max_parts, gt))
            rows.append(predicted + 1)
            classes.append(np.full(len(gt), sample.object_class, np.int64))
            self.objects[sample.object_class] += 1
        if not rows:
            return
        row, col, cls = np.concatenate(rows), np.concatenate(cols), np.concatenate(classes)
        self._grow(int(row.max()) + 1)
        num_rows, num_cols = self.counts.shape[1:]
        flat = (cls * num_rows + row) * num_cols + col
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def _grow(self, num_rows: int) -> None:
        if num_rows > self.counts.shape[1]:
            self.counts = np.pad(self.counts, ((0, 0), (0, num_rows - self.counts.shape[1]), (0, 0)))

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "objects": self.objects}

    def merge(self, state: dict[str, np.ndarray]) -> None:
        """Adds another process's state (DDP ranks, SLURM tasks)."""
        self._grow(state["counts"].shape[1])
        counts = np.pad(state["counts"], ((0, 0), (0, self.counts.shape[1] - state["counts"].shape[1]), (0, 0)))
        self.counts += counts
        self.objects += state["objects"]

    # -- scoring ------------------------------------------------------------------------------
    def label_to_part(self, cls: int, counts: np.ndarray) -> np.ndarray:
        """[rows] local part index each row (0 = no prediction, k+1 = label k) maps to; -1 = background."""
        n = len(self.parts_of.get(cls, []))
        mapped = np.full(counts.shape[0], -1, np.int64)
        overlap = counts[1:, :n]  # [labels, parts]
        if self.mapping == "majority":
            best = overlap.argmax(axis=1) if n else np.zeros(len(overlap), np.int64)
            mapped[1:] = np.where(overlap.sum(axis=1) > 0, best, -1)
        elif self.mapping == "hungarian":
            labels, parts = linear_sum_assignment(-overlap)
            keep = overlap[labels, parts] > 0
            mapped[labels[keep] + 1] = parts[keep]
        else:  # identity: label k is global part k
            local = {g: i for i, g in enumerate(self.parts_of.get(cls, []))}
            mapped[1:] = [local.get(k, -1) for k in range(len(overlap))]
        return mapped

    def evaluate(self, match: "PartMIoUEvaluator | None" = None) -> dict:
        """Scores this evaluator's counts with the mapping learned on `match` (default: these counts)."""
        match_counts = (match or self).counts
        rows = max(match_counts.shape[1], self.counts.shape[1])
        pad = lambda a: np.pad(a, ((0, 0), (0, rows - a.shape[1]), (0, 0)))  # noqa: E731
        match_counts, counts = pad(match_counts), pad(self.counts)
        per_part, per_class, mapping = [], [], {}
        for cls, name in enumerate(self.class_names):
            n = len(self.parts_of.get(cls, []))
            if n == 0:
                continue
            mapped = self.label_to_part(cls, match_counts[cls])
            onehot = (mapped[:, None] == np.arange(n)[None, :]).astype(np.int64)  # [rows, n]
            tp = (onehot * counts[cls, :, :n]).sum(axis=0)
            pred = onehot.T @ counts[cls].sum(axis=1)
            gt = counts[cls, :, :n].sum(axis=0)
            parts = [self.part_names[g] for g in self.parts_of[cls]]
            mapping[name] = {int(k - 1): (parts[p] if p >= 0 else "background") for k, p in enumerate(mapped) if k > 0}
            stats = [_part_stats(name, parts[p], int(tp[p]), int(gt[p]), int(pred[p])) for p in range(n)]
            per_part += stats
            per_class.append({"class": name, "objects": int(self.objects[cls]),
                              "mIoU": mean_defined(s["IoU"] for s in stats), "mACC": mean_defined(s["Acc"] for s in stats),
                              "mIoPred": mean_defined(s["IoPred"] for s in stats)})
        return {
            "C-mIoU": mean_defined(c["mIoU"] for c in per_class), "A-mIoU": mean_defined(s["IoU"] for s in per_part),
            "C-mACC": mean_defined(c["mACC"] for c in per_class), "A-mACC": mean_defined(s["Acc"] for s in per_part),
            "C-mIoPred": mean_defined(c["mIoPred"] for c in per_class), "A-mIoPred": mean_defined(s["IoPred"] for s in per_part),
            "per_class": per_class, "per_part": per_part, "mapping": mapping,
        }


def _part_stats(cls: str, part: str, tp: int, gt: int, pred: int) -> dict:
    """IoU / Acc / IoPred in percent; None where undefined (they are left out of the means)."""
    return {
        "class": cls, "part": part, "tp": tp, "gt": gt, "pred": pred,
        "IoU": 100.0 * tp / (gt + pred - tp) if gt + pred > 0 else None,
        "Acc": 100.0 * tp / gt if gt > 0 else None,
        "IoPred": 100.0 * tp / pred if pred > 0 else None,
    }


def mean_defined(values) -> float | None:
    """The mean of the values that are defined (not None); None when none is."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
