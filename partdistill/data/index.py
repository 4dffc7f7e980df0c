"""Indexes of ImageNet-style trees (`<folder>/<wnid>/<image>`), cached as Parquet, and their partitions.

ImageNet-22K holds 14.2M files in 21,841 class folders. Listing them is the slow part of a
load, so `build_index` lists the class folders in parallel with `os.scandir` (never glob, never
an image opened) and `cached_index` keeps the result as one Parquet file per tree. The cache
is checked with one `os.scandir` of the tree's top folder: the number of class folders and the
newest of their mtimes (a folder's mtime changes when a file is added, removed or renamed in
it; a file rewritten in place is not noticed, its `size` would then be stale).

A symlink loop or a file name that is not UTF-8 is skipped and named (`folders.problem`), at the
build and again at each load from the cache, which keeps the list in its metadata.

Later stages run as job arrays over partitions; `partition` splits the classes (whole classes,
since stages cluster per class) into contiguous runs of about equal image count.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from partdistill.data.folders import IMAGE_SUFFIXES, WNID, problem, shown
from partdistill.data.records import SkipLog
from partdistill.io import replace_atomically

log = logging.getLogger(__name__)

SCHEMA = pa.schema([("path", pa.string()), ("wnid", pa.string()), ("size", pa.int64())])
FINGERPRINT_KEY = b"partdistill.index.fingerprint"
SKIPPED_KEY = b"partdistill.index.skipped"  # JSON [[path, reason], ...] of the entries the build skipped
FORMAT_VERSION = 1  # bump when the columns change, so old caches are rebuilt


def _class_entries(folder: Path, skipped: SkipLog | None = None) -> list[os.DirEntry]:
    """The class folders (named n########) of `folder`, sorted by wnid; unusable ones go to `skipped`."""
    found = []
    with os.scandir(folder) as entries:
        for e in entries:
            if not WNID.match(e.name):
                continue
            reason = problem(e)
            if reason is None and e.is_dir():
                found.append(e)
            elif reason is not None and skipped is not None:
                skipped.add(shown(e.path), reason)
    if not found:
        raise FileNotFoundError(
            f"{folder}: no class folders named by WordNet id (n########/); "
            "point to the folder that holds the class folders (e.g. imagenet_1k/train)"
        )
    return sorted(found, key=lambda e: e.name)


def class_folders(folder: Path) -> list[str]:
    """The sorted wnids of the class folders of `folder` (one `os.scandir`, no walk)."""
    return [e.name for e in _class_entries(folder)]


def fingerprint(folder: Path, workers: int = 16) -> str:
    """A cheap token that changes when class folders are added or removed or their content changes.

    Args:
        folder (Path): the folder of class folders.
        workers (int): threads for the per-class-folder `stat` (slow on network file systems).
    """
    entries = _class_entries(folder)
    workers = max(1, min(workers, len(entries)))
    chunks = [entries[i::workers] for i in range(workers)]  # one task per thread: stats are short
    with ThreadPoolExecutor(workers) as pool:
        newest = max(pool.map(lambda chunk: max(e.stat().st_mtime_ns for e in chunk), chunks))
    return f"v{FORMAT_VERSION}:{len(entries)}:{newest}"


def _scan_class(entry: os.DirEntry, skipped: SkipLog) -> pa.RecordBatch:
    """The image files of one class folder, sorted by name."""
    found = []
    with os.scandir(entry.path) as files:
        for f in files:
            if not f.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            reason = problem(f)
            if reason is not None:
                skipped.add(shown(f.path), reason)
            elif f.is_file():  # follows symlinks (PartImageNet's valtest is made of them)
                found.append((f"{entry.name}/{f.name}", f.stat().st_size))
            else:
                skipped.add(f.path, "a broken symlink" if f.is_symlink() else "not a regular file")
    found.sort()
    return pa.RecordBatch.from_arrays(
        [pa.array([p for p, _ in found], pa.string()), pa.array([entry.name] * len(found), pa.string()),
         pa.array([n for _, n in found], pa.int64())],
        schema=SCHEMA,
    )


def build_index(folder: Path, workers: int = 16) -> pa.Table:
    """Lists the image files of every class folder of `folder`, without opening any.

    Args:
        folder (Path): a folder of class folders `n########/` (e.g. `imagenet_1k/train`).
        workers (int): threads that scan class folders in parallel.

    Returns:
        pa.Table: columns `path` (relative to `folder`, `<wnid>/<file>`), `wnid`, `size` (bytes),
        sorted by (wnid, path). Only .jpeg/.jpg/.png files (any case) are listed.

    Notes:
        The per-file `stat` (for `size`) is about 3/4 of the time on a local disk
        (benchmarks/README.md). Threads pay off on network file systems; on a local disk use
        about as many as there are cores.
    """
    skipped = SkipLog(f"index of {folder}")
    entries = _class_entries(Path(folder), skipped)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        scans = pool.map(lambda e: _scan_class(e, skipped), entries)
        batches = list(tqdm(scans, total=len(entries), desc=f"indexing {folder}", unit="class", disable=None))
    skipped.report()
    table = pa.Table.from_batches(batches, schema=SCHEMA)
    return table.replace_schema_metadata({SKIPPED_KEY: json.dumps(skipped.items).encode()})


def _report_skipped(table: pa.Table, folder: Path) -> None:
    """Names again the entries skipped when the cached index was built: they are still left out."""
    skipped = SkipLog(f"index of {folder} (cached)")
    for path, reason in json.loads((table.schema.metadata or {}).get(SKIPPED_KEY, b"[]")):
        skipped.add(path, reason)
    skipped.report()


def cache_path(folder: Path, cache_dir: Path) -> Path:
    """`<cache_dir>/index/<name>.parquet`, the name readable and unique to the absolute folder."""
    absolute = str(Path(folder).resolve())
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", absolute).strip("_")[-80:]
    digest = hashlib.sha1(absolute.encode()).hexdigest()[:12]
    return Path(cache_dir) / "index" / f"{readable}-{digest}.parquet"


def _read_if_valid(path: Path, expected: str) -> pa.Table | None:
    try:
        metadata = pq.read_schema(path).metadata or {}
        if metadata.get(FINGERPRINT_KEY) != expected.encode():
            return None
        return pq.read_table(path)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowInvalid) as error:  # unreadable: rebuilt and replaced below
        log.warning("%s: unreadable index cache (%s); rebuilding it", path, error)
        return None


def cached_index(folder: Path, cache_dir: Path, workers: int = 16) -> pa.Table:
    """`build_index(folder)`, read from `cache_path(folder, cache_dir)` while the tree is unchanged.

    Args:
        folder (Path): a folder of class folders.
        cache_dir (Path): the project's cache folder (indexes go to its `index/` subfolder).
        workers (int): threads for the fingerprint and, when the cache is stale, the scan.
    """
    path = cache_path(folder, cache_dir)
    # taken before the scan: a change made during the scan makes the next call rebuild
    token = fingerprint(Path(folder), workers)
    table = _read_if_valid(path, token)
    if table is not None:
        _report_skipped(table, folder)
        return table
    table = build_index(folder, workers)
    metadata = {**table.schema.metadata, FINGERPRINT_KEY: token.encode(), b"folder": shown(str(folder)).encode()}
    table = table.replace_schema_metadata(metadata)
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp))
    log.info("indexed %d images in %s (cached at %s)", table.num_rows, folder, path)
    return table


def class_counts(table: pa.Table) -> list[tuple[str, int]]:
    """(wnid, number of rows) per class, in table order; the rows of a class must be contiguous."""
    runs = pc.run_end_encode(table.column("wnid").combine_chunks())
    wnids, ends = runs.values.to_pylist(), runs.run_ends.to_pylist()
    if len(set(wnids)) != len(wnids):
        raise ValueError("the table's rows are not grouped by wnid; pass a table made by build_index")
    return list(zip(wnids, [end - start for start, end in zip([0] + ends[:-1], ends)]))


def _class_range(counts: list[int], index: int, num_partitions: int) -> tuple[int, int]:
    """[first, last) class positions of partition `index`: the classes whose count midpoint falls in it."""
    if num_partitions < 1 or not 0 <= index < num_partitions:
        raise ValueError(
            f"partition index {index} is not in 0..{num_partitions - 1} (num_partitions={num_partitions}); "
            "indexes are 0-based, so a job array of P tasks uses --array=0-(P-1)"
        )
    weights = counts if sum(counts) > 0 else [1] * len(counts)
    total, before, owners = sum(weights), 0, []
    for weight in weights:
        # integer form of floor(midpoint * P / total): exact, hence the same on every machine
        owners.append(min(num_partitions - 1, (2 * before + weight) * num_partitions // (2 * total)))
        before += weight
    return bisect.bisect_left(owners, index), bisect.bisect_left(owners, index + 1)


def _as_counts(table_or_class_counts: pa.Table | Mapping[str, int]) -> tuple[list[str], list[int]]:
    if isinstance(table_or_class_counts, pa.Table):
        pairs = class_counts(table_or_class_counts)
    else:
        pairs = sorted(table_or_class_counts.items())
    return [w for w, _ in pairs], [int(c) for _, c in pairs]


def partition(table_or_class_counts: pa.Table | Mapping[str, int], index: int, num_partitions: int) -> list[str]:
    """The wnids of partition `index` of `num_partitions` (0-based): contiguous, balanced by image count.

    Partition i takes the classes whose cumulative-count midpoint lies in [i*N/P, (i+1)*N/P), so
    every class is in exactly one partition and each partition is within one class size of N/P.

    Args:
        table_or_class_counts: an index table (classes in table order) or {wnid: count}
            (classes in sorted wnid order).
        index (int): the partition, 0..num_partitions-1.
        num_partitions (int): P >= 1.
    """
    wnids, counts = _as_counts(table_or_class_counts)
    first, last = _class_range(counts, index, num_partitions)
    return wnids[first:last]

