"""Reading images where a stage needs pixels: a corrupt file is skipped and counted, never fatal.

Indexing never opens images (ImageNet-22K has 14M of them), so a truncated or unreadable file is
found here, when a stage first reads it. `ImageRecords` is the torch Dataset the stages wrap in a
DataLoader; `collate` keeps the readable samples of a batch and passes the skipped ones along, so
the stage can count them and name them in its summary.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class UnreadableImage(Exception):
    """An image file that cannot be decoded (truncated, corrupt, or not an image)."""


def read_rgb(path: str) -> np.ndarray:
    """[H, W, 3] uint8; raises UnreadableImage naming the file and the decoder's reason."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:  # PIL reports truncation as OSError
        raise UnreadableImage(f"{path}: {exc}") from exc


class ImageRecords(torch.utils.data.Dataset):
    """Records with their decoded image; an unreadable one yields `{"record", "skipped": reason}`."""

    def __init__(self, records: Sequence[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            image = read_rgb(record["file_name"])
        except UnreadableImage as exc:
            return {"record": record, "skipped": str(exc)}
        return {"record": record, "image": image}


def collate(samples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(readable samples, skipped samples) of a batch; images stay numpy for the stage's resizing."""
    return [s for s in samples if "image" in s], [s for s in samples if "skipped" in s]


MAX_DEFAULT_WORKERS = 8  # beyond this, JPEG decoding rarely limits one GPU's forward passes


def loader_workers(requested: int | None) -> int:
    """Loader processes: `requested`, or (null) one per CPU this process may use, at most 8."""
    if requested is not None:
        return int(requested)
    return min(MAX_DEFAULT_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def image_loader(records: Sequence[dict], batch_size: int, workers: int | None) -> torch.utils.data.DataLoader:
    """Batches of (readable samples, skipped samples) of `records`' images, in order."""
    return torch.utils.data.DataLoader(ImageRecords(records), batch_size=batch_size,
                                       num_workers=loader_workers(workers), collate_fn=collate)
