"""Part proposal average recall (AR@k), for overlapping and non-overlapping proposals.

Definitions (percent in the report):
- Every GT object with at least one GT part is a sample; its GT parts are the merged part masks of
  `object_samples` (one per part class present).
- Per sample, the image's proposals are sorted by score (descending, stable: ties keep their order),
  intersected with the object mask, those whose best IoU with the object's GT parts is
  <= `min_gt_iou` dropped, and the top k kept, for each k in `limits`.
- Greedy matching, as detectron2's box-proposal AR: repeatedly take the highest-IoU (proposal, GT
  part) pair among the remaining ones and remove both. It stops when either side is used up or the
  best remaining IoU is 0 (such pairs count at no threshold, so stopping there changes nothing).
  Ties go to the lowest GT part index, then the lowest (best-ranked) proposal, as detectron2's
  column-wise max. Greedy is not an optimal assignment: a proposal can take the part that another,
  only slightly worse, proposal alone could have matched.
- recall(t) = matched pairs with IoU >= t / GT parts, over all samples; AR@k = mean of recall over
  t = 0.50, 0.55, ..., 0.95. The thresholds are compared in integers (20 * inter >= 20t * union),
  so IoUs that equal a threshold count whatever the float rounding.
- `AR-nonoverlap@k`: per image each pixel goes to the highest-scoring proposal covering it
  (`Prediction.winner_map`); every non-empty segment keeps its proposal's score; then the same.

The paper's evaluator truncates per image and matches against all parts of the image; here it is
per object, as the proposals are scored after multiplying by the GT object mask.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from partdistill.data.catalog import Metadata
from partdistill.evaluation.samples import (
    ObjectSample,
    Prediction,
    class_space,
    object_samples,
)

THRESHOLDS_20THS = np.arange(10, 20)  # t = k / 20: 0.50, 0.55, ..., 0.95
KINDS = ("AR", "AR-nonoverlap")
FLOAT32_EXACT = 2**24  # every integer up to here is a float32; matmul partial sums stay below it


def overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) pixel counts, both [N, P] int64, of masks a [N, M] and b [P, M] bool.

    One matrix product: in float32 while M < 2^24 (all partial sums are integers below 2^24, so exact
    in any summation order), otherwise in float64 (exact up to 2^53).
    """
    dtype = np.float32 if a.shape[1] < FLOAT32_EXACT else np.float64
    ones = np.ones((1, a.shape[1]), dtype)  # a row of ones gives a's areas in the same product, not a second pass
    counts = np.rint(a.astype(dtype) @ np.concatenate([b.astype(dtype), ones]).T).astype(np.int64)  # [N, P + 1]
    inter, area_a = counts[:, :-1], counts[:, -1:]
    return inter, area_a + b.sum(axis=1, dtype=np.int64)[None, :] - inter


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, P] float64 IoU of masks a [N, M] and b [P, M] bool; 0 where both are empty (as pycocotools)."""
    inter, union = overlaps(a, b)
    return inter / np.maximum(union, 1)


def greedy_match(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(proposal indices, GT indices) of the greedy matching of iou [N, P]; pairs with IoU 0 are not made."""
    iou = iou.T.copy()  # [P, N]: flat argmax then prefers the lowest GT, then the lowest proposal
    rows, cols = [], []
    for _ in range(min(iou.shape)):
        g, p = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[g, p] <= 0:
            break
        rows.append(p)
        cols.append(g)
        iou[g, :] = -1
        iou[:, p] = -1
    return np.array(rows, np.int64), np.array(cols, np.int64)


class ProposalAREvaluator:
    """reset() / process(inputs, outputs) / evaluate(); the state merges across processes by summing."""

    def __init__(self, metadata: Metadata, min_gt_iou: float = 0.001, limits: Sequence[int] = (1, 10, 50, 100, 200),
                 object_class: str = "synset"):
        if min_gt_iou < 0:  # proposals missing the object must drop out, or they would fill top-k slots
            raise ValueError(f"min_gt_iou must be >= 0, not {min_gt_iou}")
        self.class_names, self.parts_of, self.to_class = class_space(metadata, object_class)
        self.min_gt_iou = min_gt_iou
        self.limits = tuple(int(k) for k in limits)
        self.reset()

    def reset(self) -> None:
        self.hits = np.zeros((len(KINDS), len(self.limits), len(THRESHOLDS_20THS)), np.int64)  # matched IoU >= t
        self.gt_parts = np.zeros((), np.int64)
        self.objects = np.zeros((), np.int64)

    # -- accumulation -------------------------------------------------------------------------
    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        """Adds a batch: dataset records and the proposals predicted for each."""
        for record, prediction in zip(inputs, outputs):
            samples = object_samples(record, self.parts_of, self.to_class)
            if not samples:
                continue
            winners = prediction.winner_map()  # [H, W]
            for sample in samples:
                self.objects += 1
                self.gt_parts += len(sample.part_masks)
                self.hits[0] += self._hits(sample, sample.crop(prediction.masks) & sample.mask, prediction.scores)
                crop = sample.crop(winners)
                # segments absent from the object have IoU 0 and would be dropped, so only those present matter
                ids = np.unique(crop[sample.mask & (crop >= 0)])
                segments = (crop[None] == ids[:, None, None]) & sample.mask  # [S, h, w]
                self.hits[1] += self._hits(sample, segments, prediction.scores[ids])

    def _hits(self, sample: ObjectSample, proposals: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """[limits, thresholds] matched pairs with IoU >= t, of proposals [N, h, w] (already in the object)."""
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
        pixels = sample.mask.size  # explicit: reshape(0, -1) is ambiguous
        inter, union = overlaps(proposals[order].reshape(len(order), pixels), sample.part_masks.reshape(-1, pixels))
        iou = inter / np.maximum(union, 1)  # [N, P]
        keep = iou.max(axis=1, initial=0.0) > self.min_gt_iou
        inter, union, iou = inter[keep], union[keep], iou[keep]
        out, by_n = np.zeros((len(self.limits), len(THRESHOLDS_20THS)), np.int64), {}
        for i, k in enumerate(self.limits):
            n = min(k, len(iou))
            if n not in by_n:  # limits past the number of proposals give the same matching
                rows, cols = greedy_match(iou[:n])
                counted = 20 * inter[rows, cols][:, None] >= THRESHOLDS_20THS[None, :] * union[rows, cols][:, None]
                by_n[n] = counted.sum(axis=0)
            out[i] = by_n[n]
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"hits": self.hits, "gt_parts": self.gt_parts, "objects": self.objects}

    def merge(self, state: dict[str, np.ndarray]) -> None:
        """Adds another process's state (DDP ranks, SLURM tasks); both must use the same limits."""
        if state["hits"].shape != self.hits.shape:
            raise ValueError(f"cannot merge a state of shape {state['hits'].shape} into {self.hits.shape}")
        self.hits += state["hits"]
        self.gt_parts += state["gt_parts"]
        self.objects += state["objects"]

    # -- scoring ------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """`AR@k` and `AR-nonoverlap@k` in percent (None without GT parts), and the counts behind them."""
        res = {}
        for kind, hits in zip(KINDS, self.hits):
            for k, per_t in zip(self.limits, hits):
                res[f"{kind}@{k}"] = 100.0 * float(per_t.mean()) / int(self.gt_parts) if self.gt_parts else None
        res.update(objects=int(self.objects), gt_parts=int(self.gt_parts))
        return res
