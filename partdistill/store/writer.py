"""Writing one shard's files: records.jsonl streamed as records come, arrays.npz and the manifest at the end.

`Store.write_shard` (partdistill.store.shards) hands a `ShardWriter` over a temporary folder to the
stage and renames the folder when the writer has finished; nothing here is atomic by itself.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

RECORDS_FILE = "records.jsonl"
ARRAYS_FILE = "arrays.npz"
MANIFEST_FILE = "manifest.json"


def _json_default(value):
    """Lets records hold numpy scalars (converted) but not arrays (they belong in add_array)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        raise TypeError("numpy arrays do not go into records: store them with shard.add_array(name, array)")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (a zip of .npy files), with fixed zip timestamps.

    np.savez stamps each member with the current time, so two runs computing the same arrays
    would write different bytes; a fixed stamp makes resumed and uninterrupted runs identical.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)


def write_json(path: Path, data: dict) -> None:
    # a plain write: shard files live in the temporary folder (whose rename is the atomic step),
    # and io.write_json_atomic's mkstemp would make them 0600, unreadable to the rest of a team
    path.write_text(json.dumps(data, indent=1) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Collects one shard: records are streamed to disk as added; arrays are kept until the end."""

    def __init__(self, folder: Path, classes: Iterable[str] | None):
        self.folder = folder
        self.classes = None if classes is None else set(classes)
        self.count = 0
        self.skipped: list[list[str]] = []
        self.arrays: dict[str, np.ndarray] = {}
        self._file = open(folder / RECORDS_FILE, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()/finish()

    def add(self, record: dict) -> None:
        """Appends one record (a JSON-able dict) to records.jsonl."""
        if self.classes is not None and record.get("class_key") not in self.classes:
            raise ValueError(
                f"record class_key {record.get('class_key')!r} is not one of the shard's classes; a shard "
                "written with classes=... needs record['class_key'] set to one of them (readers filter on it)"
            )
        self._file.write(json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default) + "\n")
        self.count += 1

    def skip(self, path: object, reason: str) -> None:
        """Records that the sample at `path` was left out, and why (listed in the manifest)."""
        self.skipped.append([str(path), str(reason)])

    def add_array(self, name: str, array: np.ndarray) -> None:
        """Adds a named array to arrays.npz (plain dtypes only: it is loaded with allow_pickle=False)."""
        array = np.asarray(array)
        if not name.isidentifier():
            raise ValueError(f"array name {name!r} must be a Python identifier (it becomes {name}.npy)")
        if name in self.arrays:
            raise ValueError(f"array {name!r} was already added to this shard")
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} has an object dtype, which would need pickle; convert it first")
        self.arrays[name] = array

    def close(self) -> None:
        self._file.close()

    def finish(self, manifest: dict) -> None:
        """Writes arrays.npz and the manifest (last: it marks the shard whole) and syncs the files."""
        self.close()
        if self.arrays:
            _save_npz(self.folder / ARRAYS_FILE, self.arrays)
        write_json(self.folder / MANIFEST_FILE, manifest)
        for name in (RECORDS_FILE, ARRAYS_FILE, MANIFEST_FILE):
            if (self.folder / name).exists():
                _fsync(self.folder / name)


class CompletedElsewhere(Exception):
    """Raised into a `write_shard` block whose shard another process completed while this one waited."""


class Completed:
    """The writer of a shard that is already complete: its first write ends the block (write_shard
    swallows the exception), so the stage stops computing a shard that exists."""

    def __init__(self, what: str):
        self.what = what

    def _stop(self, *args, **kwargs):
        raise CompletedElsewhere(f"{self.what} was completed by another process")

    add = skip = add_array = _stop
