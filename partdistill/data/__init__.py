"""Datasets: `load(name)` records and `metadata(name)` classes for every catalog name."""
from partdistill.data.catalog import (
    NAMES,
    Metadata,
    load,
    metadata,
    register_detectron2,
)

__all__ = ["NAMES", "Metadata", "load", "metadata", "register_detectron2"]
