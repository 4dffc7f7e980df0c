"""Reading images where a stage needs pixels: a corrupt file is skipped and counted, never fatal.

Indexing never opens images (ImageNet-22K has 14M of them), so a truncated or unreadable file is
found here, when a stage first reads it. `ImageRecords` is the torch Dataset the stages wrap in a
DataLoader; `collate` keeps the readable samples of a batch and passes the skipped ones along, so
the stage can count them and name them in its summary. `list_images` finds a user's images (files,
folders, list files) for `partdistill predict`, `read_class_file` their object classes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from partdistill.errors import UserError


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def list_images(paths: Sequence[str], dataset_records: Sequence[dict] | None = None,
                dataset: str | None = None) -> list[dict]:
    """Records {"file_name": absolute path, "image_id"} of the images `paths` name: image files, folders (their
    image files, recursively, by suffix) and list files (one path a line, relative to the list's folder; `#`
    starts a comment). image_id is the path as given (a folder's images: the folder joined with their path
    in it) or, with `dataset_records` (of the catalog split `dataset`), that dataset's record of the same file
    (its id and annotations).
    Nothing is opened: an unreadable image is found, and skipped, when it is read."""
    found: dict[Path, str] = {}  # each file once, in the order given
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            entries = [(f, f.as_posix()) for f in sorted(path.rglob("*"))
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            entries = [(path, arg)]
        elif path.is_file():
            entries = [(path.parent / line, line) for line in _lines(path)]
        else:
            raise UserError(f"{arg}: no such file or folder; give image files, folders of images or a text file "
                            "listing image paths")
        for file, image_id in entries:
            found.setdefault(file.resolve(), image_id)
    if not found:
        raise UserError(f"no image in {', '.join(map(str, paths))}: images are files ending in "
                        f"{', '.join(IMAGE_SUFFIXES)} (a list file: one path a line)")
    records = [{"file_name": str(file), "image_id": image_id} for file, image_id in found.items()]
    if dataset_records is None:
        return records
    ids = {str(Path(r["file_name"]).resolve()): r for r in dataset_records}
    outside = [r["file_name"] for r in records if r["file_name"] not in ids]
    if outside:
        raise UserError(f"{len(outside)} image(s) are not in {dataset}, so they have no image id there: "
                        f"{', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''}; leave out the dataset "
                        "option or these images")
    return [{**ids[r["file_name"]], "file_name": r["file_name"]} for r in records]  # its id and annotations


def _lines(path: Path) -> list[str]:
    """The entries of a text file: one a line, without blank lines and `#` comments."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as a text file listing images ({exc})") from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def read_class_file(path: Path, records: Sequence[dict]) -> dict:
    """{image_id: class} of a file mapping images to classes: a JSON object {path: class} or lines `PATH CLASS`
    (the class is the rest of the line). A path, relative to the file's folder, or an image id names an image
    of `records`; entries for other images are ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such class file (a JSON object {{image path: class}} or lines 'PATH CLASS')")
    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            pairs = [(str(k), str(v)) for k, v in json.loads(text).items()]
        except (json.JSONDecodeError, AttributeError) as exc:
            raise UserError(f"{path}: not a valid JSON object of image path -> class ({exc})") from exc
    else:
        pairs = []
        for number, line in enumerate(_lines(path), 1):
            fields = line.split(None, 1)
            if len(fields) != 2:
                raise UserError(f"{path}: entry {number} ({line!r}) is not 'PATH CLASS'")
            pairs.append((fields[0], fields[1]))
    by_path = {str(Path(r["file_name"]).resolve()): r["image_id"] for r in records}
    by_id = {str(r["image_id"]): r["image_id"] for r in records}
    classes = {}
    for key, value in pairs:
        image_id = by_id.get(key, by_path.get(str((path.parent / key).resolve())))
        if image_id is not None:
            classes[image_id] = value
    return classes
