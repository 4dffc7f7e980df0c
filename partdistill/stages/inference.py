"""Running a Mask2Former over dataset records and turning its outputs into evaluator predictions.

The glue between models (tensors in, tensors out), datasets (records, image files) and evaluation
(`Prediction`s), which is why it sits with the stages. `predict_records` reads and preprocesses the
images in batches and hands each batch's outputs to a `to_predictions(outputs, batch, records)`
function: `proposals` (class-agnostic top-k masks), `semantic` (one mask per class) or
`conditioned_parts` (the distilled model's parts of each ground-truth object, given its class).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from partdistill.data import masks as rle
from partdistill.data.class_map import training_classes
from partdistill.data.images import image_loader
from partdistill.evaluation.samples import Prediction
from partdistill.models.conditioned_head import object_parts
from partdistill.models.inputs import Batch, preprocess
from partdistill.models.outputs import image_logits, top_instances

log = logging.getLogger(__name__)
ToPredictions = Callable[[object, Batch, Sequence[dict]], list[Prediction]]


def predict_batches(model, records: Sequence[dict], size: int, device: torch.device, batch_size: int = 2,
                    workers: int | None = None,
                    skipped: list[dict] | None = None) -> Iterator[tuple[list[dict], Batch, object]]:
    """(readable samples {"record", "image"}, their preprocessed batch, the model's outputs) per batch of
    `batch_size` images resized to fit `size`, read by the same loader as the partitioned stages'
    (`workers` processes; null: one per CPU, at most 8). An unreadable image is left out of its batch,
    named in the log or, when `skipped` is given, appended to it ({"record", "skipped": reason}) for the
    caller to name."""
    for readable, unreadable in image_loader(records, batch_size, workers):
        if unreadable and skipped is not None:
            skipped += unreadable
        elif unreadable:
            log.warning("%d unreadable image(s) left out: %s", len(unreadable),
                        "; ".join(f"{s['record']['file_name']} ({s['skipped']})" for s in unreadable))
        if not readable:
            continue
        batch = preprocess([sample["image"] for sample in readable], size=size, device=device)
        with torch.no_grad():
            outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
        yield readable, batch, outputs


def predict_records(model, records: Sequence[dict], to_predictions: ToPredictions, size: int,
                    device: torch.device, batch_size: int = 2,
                    workers: int | None = None) -> Iterator[tuple[list[dict], list[Prediction]]]:
    """(records, their predictions) per batch of `predict_batches`; an unreadable image is left out (so
    out of the scores) and named in the log."""
    for readable, batch, outputs in predict_batches(model, records, size, device, batch_size, workers):
        chunk = [sample["record"] for sample in readable]
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
        class_probs = outputs.class_queries_logits.float().softmax(-1)[..., :-1]  # [B, Q, C]
        padded = batch.pixel_values.shape[-2:]
        predictions = []
        for i, ((h, w), original) in enumerate(zip(batch.image_sizes, batch.original_sizes)):
            logits = image_logits(outputs.masks_queries_logits[i], padded, (h, w))  # [Q, h, w]
            scores = torch.einsum("qc,qhw->chw", class_probs[i], logits.sigmoid())  # [C, h, w]
            scores = F.interpolate(scores[None], size=tuple(original), mode="bilinear", align_corners=False)[0]
            label_map = scores.argmax(0)  # [H, W]
            labels = label_map.unique()  # sorted class ids present
            masks = label_map[None] == labels[:, None, None]
            predictions.append(Prediction(masks.cpu().numpy(), labels.cpu().numpy().astype(np.int64),
                                          np.ones(len(labels), np.float32)))
        return predictions

    return to_predictions


def parts_of_head(head: dict, metadata, dataset_name: str):
    """`conditioned_parts` for a distillation model described by its head.json (training classes, the
    data they came from, parts per class) on dataset `dataset_name` with `metadata`."""
    return conditioned_parts(training_classes(metadata, dataset_name, head["train_data"], head["classes"]),
                             head["num_parts"])


def conditioned_parts(object_classes: Sequence[int | None], num_parts: int, top_k: int = 200):
    """to_predictions for `predict_records`: the parts of every ground-truth object of
    each record, conditioned on `object_classes[category_id]` (the training class of each dataset class)."""

    def to_predictions(outputs, batch: Batch, records: Sequence[dict]) -> list[Prediction]:
        padded = batch.pixel_values.shape[-2:]
        predictions = []
        for i, record in enumerate(records):
            (h, w), original = batch.image_sizes[i], batch.original_sizes[i]
            objects = [a for a in record["annotations"] if a.get("segmentation") is not None]
            if not objects:
                predictions.append(Prediction.empty(*original))
                continue
            logits = image_logits(outputs.masks_queries_logits[i], padded, (h, w), original)  # [Q, H, W]
            all_masks, all_labels, all_scores = [], [], []
            for annotation in objects:
                mask = torch.from_numpy(rle.decode(annotation["segmentation"]).astype(bool)).to(logits.device)
                parts = parts_in_mask(outputs.class_queries_logits[i], logits, mask,
                                      object_classes[annotation["category_id"]], num_parts, top_k)
                if parts is not None:
                    all_masks.append(parts[0])
                    all_labels.append(parts[1])
                    all_scores.append(parts[2])
            if not all_masks:
                predictions.append(Prediction.empty(*original))
                continue
            predictions.append(Prediction(np.concatenate(all_masks), np.concatenate(all_labels).astype(np.int64),
                                          np.concatenate(all_scores).astype(np.float32)))
        return predictions

    return to_predictions


def parts_in_mask(class_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, object_class: int | None,
                  num_parts: int, top_k: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The parts of the object `mask` ([H, W] bool) of one image (class logits [Q, K x C + 1], mask logits
    [Q, H, W] at its original size) as numpy (masks [N, H, W], labels, scores), or None for an empty mask.
    The work is done on the object's box: the per-pixel winner does not depend on the crop."""
    ys, xs = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    part_masks, labels, scores = object_parts(class_logits, logits[:, y0:y1, x0:x1], mask[y0:y1, x0:x1],
                                              object_class, num_parts, top_k)
    full = torch.zeros((len(part_masks), *mask.shape), dtype=torch.bool, device=logits.device)
    full[:, y0:y1, x0:x1] = part_masks
    return full.cpu().numpy(), labels.cpu().numpy(), scores.cpu().numpy()
