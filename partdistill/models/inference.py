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


def semantic() -> ToPredictions:
    """Each image's semantic segmentation as one mask per predicted class (label = class id, score 1).

    Mask2Former's semantic inference: per pixel, the class scores summed over queries,
    softmax(class logits) without no-object x sigmoid(mask logits), then the argmax class. The mask
    logits are upsampled to the padded input and cropped to the image's valid region (as
    `top_instances`); the [C, h, w] class scores are then resized to the original image size. (detectron2
    resizes the [Q, h, w] logits before the sigmoid; resizing the class scores is the same up to
    resampling and needs C instead of Q maps at the original size.) Every pixel gets a class: the head
    has no background class.
    """

    def to_predictions(outputs, batch: Batch, records: Sequence[dict]) -> list[Prediction]:
        import torch.nn.functional as F

        class_probs = outputs.class_queries_logits.float().softmax(-1)[..., :-1]  # [B, Q, C]
        padded = batch.pixel_values.shape[-2:]
        predictions = []
        for i, ((h, w), original) in enumerate(zip(batch.image_sizes, batch.original_sizes)):
            logits = outputs.masks_queries_logits[i].float()[None]  # [1, Q, Hp/4, Wp/4]
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)[0, :, :h, :w]
            scores = torch.einsum("qc,qhw->chw", class_probs[i], logits.sigmoid())  # [C, h, w]
            scores = F.interpolate(scores[None], size=tuple(original), mode="bilinear", align_corners=False)[0]
            label_map = scores.argmax(0)  # [H, W]
            labels = label_map.unique()  # sorted class ids present
            masks = label_map[None] == labels[:, None, None]
            predictions.append(Prediction(masks.cpu().numpy(), labels.cpu().numpy().astype(np.int64),
                                          np.ones(len(labels), np.float32)))
        return predictions

    return to_predictions
