"""Saved predictions: the file format any method can write to be scored by partdistill.

A file is a JSON list, or JSON Lines, of segment records:

    {"image_id": <the dataset record's image_id, same value and type>,
     "segmentation": <COCO RLE at the image's original size>,
     "label": <int >= 0>, "score": <float>}

Where segments overlap, a pixel takes the label of the highest-scoring segment covering it.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from partdistill.data import masks
from partdistill.errors import UserError
from partdistill.evaluation.samples import Prediction

FIX = "see the prediction format in partdistill/evaluation/predictions.py"


class PredictionError(UserError, ValueError):
    """A prediction file that cannot be scored; the message names the record index and the fix."""


def read_predictions(path: str | Path) -> list[dict]:
    """The segment records of a JSON list or JSON Lines file, checked for keys and types."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"prediction file {path} does not exist")
    text = path.read_text()
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    except json.JSONDecodeError as exc:
        raise PredictionError(f"{path} is neither a JSON list nor JSON Lines ({exc}); {FIX}") from exc
    for i, rec in enumerate(records):
        missing = {"image_id", "segmentation", "label", "score"} - set(rec) if isinstance(rec, dict) else {"all keys"}
        if missing:
            raise PredictionError(f"{path}: record {i} lacks {sorted(missing)}; {FIX}")
        if not isinstance(rec["label"], int) or rec["label"] < 0:
            raise PredictionError(f"{path}: record {i} has label {rec['label']!r}; labels are ints >= 0")
        seg = rec["segmentation"]
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            raise PredictionError(f"{path}: record {i} has no COCO RLE segmentation ({{'size', 'counts'}}); {FIX}")
    return records


def group_by_image(predictions: list[dict], dataset: Iterable[dict], source: str = "predictions") -> dict:
    """image_id -> its segment records; errors name the record whose image or size does not match."""
    sizes = {r["image_id"]: (r["height"], r["width"]) for r in dataset}
    grouped: dict = defaultdict(list)
    for i, rec in enumerate(predictions):
        image_id = rec["image_id"]
        if image_id not in sizes:
            example = next(iter(sizes), None)
            raise PredictionError(
                f"{source}: record {i} has image_id {image_id!r} ({type(image_id).__name__}), which is not in the "
                f"dataset; use the dataset records' own image_id values and type (e.g. {example!r})"
            )
        if tuple(rec["segmentation"]["size"]) != tuple(sizes[image_id]):
            raise PredictionError(
                f"{source}: record {i} (image_id {image_id!r}) has an RLE of size {rec['segmentation']['size']}, "
                f"but the image is {list(sizes[image_id])} (height, width); encode masks at the original image size"
            )
        grouped[image_id].append(rec)
    return grouped


def to_prediction(segments: list[dict], height: int, width: int) -> Prediction:
    """Dense masks of one image's segment records."""
    if not segments:
        return Prediction.empty(height, width)
    return Prediction(
        np.stack([masks.decode(s["segmentation"]) for s in segments]),
        np.array([s["label"] for s in segments], np.int64),
        np.array([s["score"] for s in segments], np.float32),
    )


def from_prediction(image_id, prediction: Prediction) -> list[dict]:
    """Segment records of a Prediction, ready to be written as a prediction file."""
    return [
        {"image_id": image_id, "segmentation": masks.encode(m), "label": int(label), "score": float(score)}
        for m, label, score in zip(prediction.masks, prediction.labels, prediction.scores)
    ]
