"""An evaluation dataset's object classes in a model's training label space.

The distillation head is indexed by the training classes (the store's class keys: ImageNet wnids,
or `class-<id>` for datasets without wnids). Each object class of an evaluation dataset is looked up,
in order, as:
  1. its own wnid (PartImageNet's classes are ImageNet synsets);
  2. the same class of the same dataset family (`class-<id>`: e.g. synthetic trained, synthetic scored);
  3. its entries in `datasets/metadata/imagenet_counterparts.yaml` (Pascal-Part, Cityscapes-Part), the
     first one among the training classes.
A class with no counterpart maps to None: its objects are scored unconditioned (see
`models.conditioned_head`). The paper's code instead passed dataset-local class indices into the
ImageNet-indexed head, conditioning each object on an unrelated class.
"""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from partdistill.data.catalog import Metadata, parse_name
from partdistill.paths import CHECKOUT

log = logging.getLogger(__name__)
COUNTERPARTS_PATH = CHECKOUT / "datasets" / "metadata" / "imagenet_counterparts.yaml"


def counterparts(path: Path = COUNTERPARTS_PATH) -> dict[str, dict[str, list[str]]]:
    return yaml.safe_load(Path(path).read_text())


def training_classes(metadata: Metadata, dataset_name: str, train_data: str, classes: list[str]) -> list[int | None]:
    """For each object class of `dataset_name` (e.g. "pascal_parts_val"), its index in `classes` (the
    training class keys of a model trained on `train_data`, e.g. "imagenet_1k_train"), or None."""
    family, train_family = parse_name(dataset_name)[0], parse_name(train_data)[0]
    index = {key: i for i, key in enumerate(classes)}
    table = counterparts().get(family, {})
    wnids = metadata.extra.get("wnids", [])
    result: list[int | None] = []
    for i, name in enumerate(metadata.thing_classes):
        candidates = [wnids[i]] if i < len(wnids) else []
        if family == train_family:
            candidates.append(f"class-{i}")
        candidates += table.get(name, [])
        result.append(next((index[key] for key in candidates if key in index), None))
    missing = [name for name, value in zip(metadata.thing_classes, result) if value is None]
    if missing:
        log.warning("%s: %d of %d object classes have no counterpart among the %d training classes of %s and are "
                    "scored unconditioned: %s", dataset_name, len(missing), len(result), len(classes), train_data,
                    ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return result
