"""How well an instance model finds the object: the IoU of its most confident mask with the ground truth.

The method keeps one instance per image (object_masks), so what matters of the instance model is
that one mask. Per image with ground-truth objects: the IoU of the top-scoring predicted mask with
the ground-truth object it overlaps most (0 when the model predicts nothing); reported as the mean
over images, x100, with the share of images whose IoU exceeds 0.5.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from partdistill.data import masks
from partdistill.evaluation.samples import Prediction


class TopInstanceIoUEvaluator:
    """reset / process(records, predictions) / evaluate() -> {"top_instance_IoU", "top_instance_IoU>0.5", "images"}."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.ious: list[float] = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        for record, prediction in zip(inputs, outputs):
            objects = [masks.decode(a["segmentation"]).astype(bool) for a in record.get("annotations", [])]
            if not objects:
                continue
            if not len(prediction.masks):
                self.ious.append(0.0)
                continue
            top = prediction.masks[int(np.argmax(prediction.scores))]
            self.ious.append(max(float((top & gt).sum()) / max(float((top | gt).sum()), 1.0) for gt in objects))

    def evaluate(self) -> dict:
        ious = np.array(self.ious, dtype=np.float64)
        return {"top_instance_IoU": float(100 * ious.mean()) if len(ious) else None,
                "top_instance_IoU>0.5": float(100 * (ious > 0.5).mean()) if len(ious) else None,
                "images": len(ious)}
