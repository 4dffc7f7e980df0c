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
While a process writes a shard it holds `.part-<i>-of-<P>.lock` (`partdistill.store.locks`), so
two runs of one stage on one run_dir take turns on a shard instead of undoing each other's work.

Partitions hold whole classes (part ranking clusters per class), see `store.partitions`. A
writer that passes `classes` to `write_shard` must set `record["class_key"]` on every record:
readers filter shards by their manifest's classes and records by that field.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from partdistill.errors import UserError
from partdistill.identity import differences, identity_hash
from partdistill.store import locks
from partdistill.store.writer import (
    ARRAYS_FILE,
    MANIFEST_FILE,
    RECORDS_FILE,
    Completed,
    CompletedElsewhere,
    ShardWriter,
    write_json,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout or a manifest field changes meaning
STORE_FILE = "store.json"


class StoreMismatch(UserError):
    """The store on disk was built from another configuration than the one asked for."""


class StoreMissing(UserError):
    """The store (or one of its shards) that a stage reads has not been written yet."""


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
                + "\n".join(differences(_comparable(stored), _comparable(wanted)))
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
        One live process at a time writes a shard (a lock beside it, `partdistill.store.locks`):
        another one waits for it, with one log line, and if the shard is then complete, its block
        ends at its first write and writes nothing, so it stops computing a shard that exists.
        Leftover temporary folders of the shard (from killed writers) are removed first.
        """
        final = self.shard_dir(i)
        if self.is_complete(i):
            raise FileExistsError(f"{final}: shard {i} is already complete; check store.is_complete(i) first")
        with locks.locked(self.folder / f".{final.name}.lock", f"{final.name} of stage '{self.stage}'") as held:
            if self.is_complete(i):
                log.debug("%s was completed by the process this one waited for: not written again", final)
                with contextlib.suppress(CompletedElsewhere):
                    yield Completed(str(final))
                return
            # with the lock held, a temporary folder of this shard is a dead writer's (without locks,
            # it may be a live duplicate's, which then loses it and fails: one of them suffices)
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
                    shard.close()
                shard.finish({
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
                except OSError:  # without locks, a duplicate completed it meanwhile: same identity, keep it
                    if held or not self.is_complete(i):
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
    write_json(tmp, header)
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
