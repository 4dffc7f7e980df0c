"""Running a Mask2Former over dataset records and turning its outputs into evaluator predictions.

`predict_records` reads and preprocesses the images in batches and hands each batch's outputs to a
`to_predictions(outputs, batch, records)` function: `proposals` here (class-agnostic top-k masks);
stages with other heads pass their own.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from partdistill.data.images import read_rgb
from partdistill.evaluation.samples import Prediction
from partdistill.models.mask2former import Batch, preprocess, top_instances

ToPredictions = Callable[[object, Batch, Sequence[dict]], list[Prediction]]


def predict_records(model, records: Sequence[dict], to_predictions: ToPredictions, size: int,
                    device: torch.device, batch_size: int = 2) -> Iterator[tuple[list[dict], list[Prediction]]]:
    """(records, their predictions) per batch of `batch_size` images resized to fit `size`."""
    for start in range(0, len(records), batch_size):
        chunk = list(records[start:start + batch_size])
        batch = preprocess([read_rgb(r["file_name"]) for r in chunk], size=size, device=device)
        with torch.no_grad():
            outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
        yield chunk, to_predictions(outputs, batch, chunk)


def proposals(k: int) -> ToPredictions:
    """Each image's k most confident masks as label-0 proposals (Mask2Former's instance scoring)."""

    def to_predictions(outputs, batch: Batch, records: Sequence[dict]) -> list[Prediction]:
        predictions = []
        for record, instances in zip(records, top_instances(outputs, batch, k=k)):
            if not instances:
                predictions.append(Prediction.empty(record["height"], record["width"]))
                continue
            predictions.append(Prediction(np.stack([i["mask"] for i in instances]), np.zeros(len(instances), np.int64),
                                          np.array([i["score"] for i in instances], np.float32)))
        return predictions

    return to_predictions
