"""Dataset records (detectron2-style dicts) and the log of samples a loader had to skip."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from partdistill.data import masks

XYXY_ABS = 0  # detectron2's BoxMode.XYXY_ABS
log = logging.getLogger(__name__)


def part_record(category_id: int, mask: np.ndarray, **extra) -> dict:
    return {"category_id": int(category_id), "segmentation": masks.encode(mask), **extra}


def object_record(category_id: int, mask: np.ndarray, parts: Iterable[dict] = (), **extra) -> dict:
    """An object annotation: class, XYXY box, RLE mask and its part annotations (see part_record)."""
    return {
        "category_id": int(category_id),
        "bbox": masks.bbox_xyxy(mask),
        "bbox_mode": XYXY_ABS,
        "segmentation": masks.encode(mask),
        "parts": list(parts),
        **extra,
    }


@dataclass
class SkipLog:
    """Samples skipped while loading one dataset: counted, and named at the end of the load."""

    name: str
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: object, reason: str) -> None:
        self.items.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.items)

    def report(self, shown: int = 20) -> None:
        """Logs one warning naming the skipped samples (the first `shown` of them)."""
        if not self.items:
            return
        lines = [f"  {path}: {reason}" for path, reason in self.items[:shown]]
        if len(self.items) > shown:
            lines.append(f"  ... and {len(self.items) - shown} more")
        log.warning("%s: skipped %d sample(s):\n%s", self.name, len(self.items), "\n".join(lines))
