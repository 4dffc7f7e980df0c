"""The catalog of dataset names (as detectron2's): `load(name)` gives records, `metadata(name)` classes.

Names are `<dataset>_<split>`: imagenet_1k_{train,val}, imagenet_22k_train,
part_imagenet_{train,val,test,valtest}, pascal_parts_{train,val}, cityscapes_part_{train,val},
synthetic_{train,val}, and synthetic-s<seed>-n<images>_{train,val} (the synthetic set made from that
seed and size, written on demand by `synthetic.ensure`). Each dataset module implements the same three functions:

    load(dataset, base, split, root) -> list[dict]      records (see DESIGN.md "Contracts")
    metadata(dataset, base, split, root) -> Metadata
    synthesize(dataset, base, num_images, seed) -> None  a tiny copy in the real on-disk format

where `base` is the dataset's folder (after the layout check and its aliases) and `root` the
project root that holds `datasets/` (and `cache/`, for indexes).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from partdistill.data.layout import KEYED_SYNTHETIC, check_dataset, family
from partdistill.data.missing import DatasetLayoutError
from partdistill.paths import project_root

log = logging.getLogger(__name__)

# dataset -> (module under partdistill.data, its splits)
DATASETS = {
    "imagenet_1k": ("imagenet", ("train", "val")),
    "imagenet_22k": ("imagenet", ("train",)),
    "part_imagenet": ("part_imagenet", ("train", "val", "test", "valtest")),
    "pascal_parts": ("pascal_parts", ("train", "val")),
    "cityscapes_part": ("cityscapes_part", ("train", "val")),
    "synthetic": ("synthetic", ("train", "val")),
}
NAMES = tuple(f"{dataset}_{split}" for dataset, (_, splits) in DATASETS.items() for split in splits)


@dataclass
class Metadata:
    """Classes of a dataset; ids in records index these lists (0-based, contiguous)."""

    thing_classes: list[str]
    part_classes: list[str] = field(default_factory=list)
    parts_of: dict[int, list[int]] = field(default_factory=dict)  # object class id -> its part class ids
    extra: dict = field(default_factory=dict)  # dataset-specific (wnids, supercategories, ...)


def parse_name(name: str) -> tuple[str, str]:
    """`part_imagenet_valtest` -> ("part_imagenet", "valtest")."""
    for dataset, (_, splits) in DATASETS.items():
        prefix = dataset + "_"
        if name.startswith(prefix) and name[len(prefix) :] in splits:
            return dataset, name[len(prefix) :]
    dataset, _, split = name.rpartition("_")
    if KEYED_SYNTHETIC.match(dataset) and split in DATASETS["synthetic"][1]:
        return dataset, split
    raise KeyError(f"unknown dataset name {name!r}; known names: {', '.join(NAMES)}")


def dataset_module(dataset: str) -> ModuleType:
    return importlib.import_module(f"partdistill.data.{DATASETS[family(dataset)][0]}")


def locate(name: str, root: str | Path | None = None) -> tuple[ModuleType, str, Path, str, Path]:
    """(module, dataset, its folder, split, project root) of a name, once its layout checks out."""
    dataset, split = parse_name(name)
    given = f"the root passed to partdistill.data: {root}" if root is not None else None
    root = Path(root) if root is not None else project_root()
    report = check_dataset(dataset, root / "datasets", [split])
    if report.missing:
        raise DatasetLayoutError([report], given)
    for warning in report.warnings:
        log.warning("%s: %s", dataset, warning)
    return dataset_module(dataset), dataset, report.path, split, root


def load(name: str, root: str | Path | None = None) -> list[dict]:
    """The records of a dataset split; `root` holds `datasets/` ($PART_DISTILLATION_ROOT by default)."""
    module, dataset, base, split, root = locate(name, root)
    return module.load(dataset, base, split, root)


def metadata(name: str, root: str | Path | None = None) -> Metadata:
    module, dataset, base, split, root = locate(name, root)
    return module.metadata(dataset, base, split, root)


def register_detectron2(root: str | Path | None = None) -> bool:
    """Registers every name in detectron2's DatasetCatalog/MetadataCatalog, if detectron2 is installed."""
    try:
        from detectron2.data import DatasetCatalog, MetadataCatalog
    except ImportError:
        log.warning("detectron2 is not installed: nothing registered (partdistill does not need it)")
        return False
    for name in NAMES:
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: load(name, root))
        MetadataCatalog.get(name).set(evaluator_type="part_segmentation")
    return True
