"""The sharded, resumable pseudo-label store where pipeline stages meet.

Layout of one stage's store:

    <root>/<stage>/store.json               stage, num_partitions, identity and its hash, format version
    <root>/<stage>/part-<i>-of-<P>/
        records.jsonl                       one JSON object per image (fields chosen by the stage;
                                            masks as COCO RLE with str counts, see data.masks.encode)
        arrays.npz                          optional named numpy arrays (no object dtypes, no pickles)
        manifest.json                       partition, identity hash, counts, skipped samples, classes

A shard is written into `part-<i>-of-<P>.tmp-<pid>` and renamed when complete, so a shard folder
exists only once all its files do: a killed job array loses only the shards in flight, and a
rerun skips the complete ones. Atomicity covers killed processes; the files are also fsynced
before the rename so that a node crash does not leave a complete-looking shard with lost data.

Partitions hold whole classes (part ranking clusters per class), see `partition_records`. A
writer that passes `classes` to `write_shard` must set `record["class_key"]` on every record:
readers filter shards by their manifest's classes and records by that field.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from partdistill.data.index import partition
from partdistill.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout or a manifest field changes meaning
STORE_FILE = "store.json"
RECORDS_FILE = "records.jsonl"
ARRAYS_FILE = "arrays.npz"
MANIFEST_FILE = "manifest.json"
_MISSING = "<missing>"


class StoreMismatch(UserError):
    """The store on disk was built from another configuration than the one asked for."""


class StoreMissing(UserError):
    """The store (or one of its shards) that a stage reads has not been written yet."""


def identity_hash(identity: dict) -> str:
    """The first 16 hex chars of the sha256 of `identity` as canonical JSON (sorted keys, compact)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(value, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out = {}
    for key, child in value.items():
        out.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' lines for every flattened key whose values differ."""
    old, new = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a != b:
            lines.append(f"  {key}: {json.dumps(a) if a is not _MISSING else a} (stored) vs "
                         f"{json.dumps(b) if b is not _MISSING else b} (now)")
    return lines


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


def _write_json(path: Path, data: dict) -> None:
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
        self._file = open(folder / RECORDS_FILE, "w", encoding="utf-8")

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

    def _finish(self, manifest: dict) -> None:
        self._file.close()
        if self.arrays:
            _save_npz(self.folder / ARRAYS_FILE, self.arrays)
        _write_json(self.folder / MANIFEST_FILE, manifest)
        for name in (RECORDS_FILE, ARRAYS_FILE, MANIFEST_FILE):
            if (self.folder / name).exists():
                _fsync(self.folder / name)


class Store:
    """One stage's shards under `<root>/<stage>/`.

    Args:
        root (Path): the store root (e.g. `<run_dir>/store`).
        stage (str): the stage name (its folder).
        num_partitions (int): P, the number of shards.
        identity (dict): JSON-able; everything that determines the shard contents (stage params
            except partition index/resources/batch size, data name, model, upstream store hash...).

    Raises:
        StoreMismatch: `store.json` exists with another identity or num_partitions.
    """

    def __init__(self, root: Path, stage: str, num_partitions: int, identity: dict):
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        identity = json.loads(json.dumps(identity, allow_nan=False))  # as it will read back from disk
        self._attach(root, stage, num_partitions, identity)
        wanted = self._header()
        self.folder.mkdir(parents=True, exist_ok=True)
        stored = _create_or_read(self.folder / STORE_FILE, wanted)
        if stored != wanted:
            raise StoreMismatch(
                f"{self.folder}: this store was written with identity {stored.get('identity_hash')}, but the "
                f"configuration now gives {self.hash}. What differs:\n"
                + "\n".join(_differences(_comparable(stored), _comparable(wanted)))
                + f"\nUse another run_dir, or delete {self.folder} to recompute this stage."
            )

    def _attach(self, root: Path, stage: str, num_partitions: int, identity: dict) -> None:
        self.root, self.stage = Path(root), stage
        self.folder = self.root / stage
        self.num_partitions, self.identity = num_partitions, identity
        self.hash = identity_hash(identity)

    def _header(self) -> dict:
        return {"format_version": FORMAT_VERSION, "stage": self.stage, "num_partitions": self.num_partitions,
                "identity_hash": self.hash, "identity": self.identity}

    @classmethod
    def open(cls, root: Path, stage: str, expected_identity_hash: str | None = None) -> Store:
        """Opens an existing store for reading.

        Args:
            expected_identity_hash (str | None): the hash a downstream stage recorded for its input;
                a store since rebuilt with another identity is refused.

        Raises:
            StoreMissing: no `store.json` (the stage has not run).
            StoreMismatch: the store's identity hash is not `expected_identity_hash`.
        """
        folder = Path(root) / stage
        try:
            header = json.loads((folder / STORE_FILE).read_text())
        except FileNotFoundError:
            raise StoreMissing(
                f"{folder}: no store for stage '{stage}' ({STORE_FILE} is missing); "
                f"run it first: python launch.py stage={stage}"
            ) from None
        if expected_identity_hash is not None and header["identity_hash"] != expected_identity_hash:
            raise StoreMismatch(
                f"{folder}: expected the '{stage}' store with identity {expected_identity_hash}, but it now has "
                f"identity {header['identity_hash']} (it was recomputed with another configuration since). "
                f"Use another run_dir, or delete the stages built from it to recompute them."
            )
        store = cls.__new__(cls)
        store._attach(root, stage, header["num_partitions"], header["identity"])
        return store

    # -- partitions ---------------------------------------------------------------------------

    def shard_dir(self, i: int) -> Path:
        """`<root>/<stage>/part-<i>-of-<P>` (whether or not it exists)."""
        if not 0 <= i < self.num_partitions:
            raise ValueError(f"partition {i} is not in 0..{self.num_partitions - 1} (0-based)")
        return self.folder / f"part-{i}-of-{self.num_partitions}"

    def is_complete(self, i: int) -> bool:
        # the manifest is written last, inside the temporary folder, so it marks a whole shard
        return (self.shard_dir(i) / MANIFEST_FILE).is_file()

    def complete(self) -> list[int]:
        return [i for i in range(self.num_partitions) if self.is_complete(i)]

    def incomplete(self) -> list[int]:
        return [i for i in range(self.num_partitions) if not self.is_complete(i)]

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_shard(self, i: int, classes: Iterable[str] | None = None) -> Iterator[ShardWriter]:
        """`with store.write_shard(i, classes) as shard:` writes partition i, all or nothing.

        Args:
            i (int): the partition.
            classes (Iterable[str] | None): the class keys the shard covers (saved, sorted, in its
                manifest); when given, every record must have `class_key` set to one of them.

        On an exception in the block the temporary folder is removed and the exception propagates.
        Leftover temporary folders of this shard (from killed processes) are removed first.
        """
        final = self.shard_dir(i)
        if self.is_complete(i):
            raise FileExistsError(f"{final}: shard {i} is already complete; check store.is_complete(i) first")
        # a duplicate task still writing this shard elsewhere loses its folder and fails: one suffices
        for leftover in self.folder.glob(f"{final.name}.tmp-*"):
            log.info("removing %s, left by an interrupted writer", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = self.folder / f"{final.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            shard = ShardWriter(tmp, classes)
            try:
                yield shard
            finally:
                shard._file.close()
            shard._finish({
                "format_version": FORMAT_VERSION, "stage": self.stage, "partition": i,
                "num_partitions": self.num_partitions, "identity_hash": self.hash,
                "counts": {"records": shard.count, "skipped": len(shard.skipped)},
                "skipped": shard.skipped,
                "classes": None if shard.classes is None else sorted(shard.classes),
                "arrays": sorted(shard.arrays),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            try:
                os.rename(tmp, final)
            except OSError:  # a duplicate task completed the same shard meanwhile: same identity, keep it
                if not self.is_complete(i):
                    raise
                log.warning("%s was completed by another writer meanwhile; discarding this copy", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename

    # -- reading ------------------------------------------------------------------------------

    def _require(self, i: int) -> Path:
        if not self.is_complete(i):
            raise StoreMissing(
                f"{self.shard_dir(i)}: shard {i} of stage '{self.stage}' is not complete; "
                f"run: python launch.py stage={self.stage} (complete shards are skipped)"
            )
        return self.shard_dir(i)

    def manifest(self, i: int) -> dict:
        """The manifest of complete shard i."""
        return json.loads((self._require(i) / MANIFEST_FILE).read_text())

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """The named arrays of complete shard i ({} if it has none)."""
        path = self._require(i) / ARRAYS_FILE
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}

    def records(self, classes: set[str] | None = None) -> Iterator[dict]:
        """The records of the complete shards, in partition order, read lazily line by line.

        Args:
            classes (set[str] | None): only shards whose manifest classes intersect these (or that
                list no classes), and only records whose `record["class_key"]` is one of them.
        """
        wanted = None if classes is None else set(classes)
        for i in self.complete():
            folder = self.shard_dir(i)
            if wanted is not None:
                covered = self.manifest(i)["classes"]
                if covered is not None and wanted.isdisjoint(covered):
                    continue
            with open(folder / RECORDS_FILE, encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    if wanted is None or record.get("class_key") in wanted:
                        yield record

    def summary(self) -> dict:
        """Complete/incomplete partitions and the totals of records and skipped samples."""
        done = self.complete()
        counts = [self.manifest(i)["counts"] for i in done]
        return {"stage": self.stage, "folder": str(self.folder), "identity_hash": self.hash,
                "num_partitions": self.num_partitions, "complete": done, "incomplete": self.incomplete(),
                "records": sum(c["records"] for c in counts), "skipped": sum(c["skipped"] for c in counts)}


def _comparable(header: dict) -> dict:
    """The fields of store.json that must match; the hash is left out (named in the message instead)."""
    return {k: v for k, v in header.items() if k != "identity_hash"}


def _create_or_read(path: Path, header: dict) -> dict:
    """Writes `header` to `path` unless it exists; returns what is there.

    Array tasks race to create it: each writes a temporary file and hard-links it to `path`,
    which fails when another task got there first, whose header is then the one to check.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_json(tmp, header)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # file systems without hard links: a plain rename, if still absent
        if not path.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return json.loads(path.read_text())


def class_key(record: dict) -> str:
    """A record's class: the `class_key` a store record carries, else a dataset record's `wnid`, else
    `class-<category_id of its first annotation>`, else 'all'."""
    if "class_key" in record:
        return record["class_key"]
    if "wnid" in record:
        return record["wnid"]
    if record.get("annotations"):
        return f"class-{record['annotations'][0]['category_id']}"
    return "all"


def partition_records(records: list[dict], index: int, num_partitions: int,
                      key: Callable[[dict], str] = class_key) -> list[dict]:
    """The records of partition `index` of `num_partitions`, in their input order.

    Partitions hold whole classes (part ranking clusters per class): the classes, in sorted key
    order, are split into contiguous runs of about equal image count by `data.index.partition`.
    With fewer classes than partitions (or one dominant class) some partitions are empty.
    """
    keys = [key(r) for r in records]
    chosen = set(partition(Counter(keys), index, num_partitions))
    return [r for r, k in zip(records, keys) if k in chosen]
