"""ImageNet loading: synthetic copies round-trip through the catalog; the index cache; partitions."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from partdistill.data import catalog, imagenet, index

WNIDS = [wnid for wnid, _ in imagenet.SYNTHETIC_CLASSES]


def _images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("n*/*.JPEG"))


def _synth(tmp_path: Path, dataset: str, folder_name: str | None = None, num_images: int = 7) -> Path:
    base = tmp_path / "datasets" / (folder_name or dataset)
    imagenet.synthesize(dataset, base, num_images=num_images, seed=0)
    return base


def _counting_build(monkeypatch) -> list[Path]:
    """Makes index.build_index record each folder it builds."""
    calls, build = [], index.build_index
    monkeypatch.setattr(index, "build_index", lambda folder, workers=16: calls.append(folder) or build(folder, workers))
    return calls


@pytest.mark.parametrize("split", ["train", "val"])
def test_imagenet_1k_round_trip(tmp_path, split):
    base = _synth(tmp_path, "imagenet_1k")
    records = catalog.load(f"imagenet_1k_{split}", root=tmp_path)
    assert [r["file_name"] for r in records] == _images(base / split)
    assert len(records) == 7
    for r in records:
        path = Path(r["file_name"])
        assert path.is_absolute() and r["image_id"] == path.stem
        assert r["wnid"] == path.parent.name and WNIDS[r["class_id"]] == r["wnid"]
        assert r["height"] is None and r["width"] is None
    assert {r["wnid"] for r in records} == set(WNIDS)  # at least one image per class
    meta = catalog.metadata(f"imagenet_1k_{split}", root=tmp_path)
    assert meta.thing_classes == WNIDS and meta.extra["wnids"] == WNIDS and meta.part_classes == []


@pytest.mark.parametrize("folder_name", ["imagenet_22k", "imagenet_21k"])
def test_imagenet_22k_round_trip(tmp_path, folder_name):
    base = _synth(tmp_path, "imagenet_22k", folder_name, num_images=3)  # fewer than classes: one each
    records = catalog.load("imagenet_22k_train", root=tmp_path)
    assert [r["file_name"] for r in records] == _images(base)
    assert [r["image_id"] for r in records] == [f"{wnid}_1" for wnid in WNIDS]
    assert [r["class_id"] for r in records] == list(range(len(WNIDS)))
    meta = catalog.metadata("imagenet_22k_train", root=tmp_path)
    assert meta.thing_classes[:2] == ["tench", "goldfish"] and meta.extra["wnids"] == WNIDS


def test_synthesize_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    imagenet.synthesize("imagenet_22k", a, num_images=5, seed=3)
    imagenet.synthesize("imagenet_22k", b, num_images=5, seed=3)
    files = [p.relative_to(a) for p in sorted(a.rglob("*")) if p.is_file()]
    assert files == [p.relative_to(b) for p in sorted(b.rglob("*")) if p.is_file()]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_load_never_opens_images(tmp_path):
    base = _synth(tmp_path, "imagenet_22k", num_images=5)
    garbage = base / WNIDS[0] / f"{WNIDS[0]}_99.JPEG"
    garbage.write_bytes(b"not a jpeg")
    records = catalog.load("imagenet_22k_train", root=tmp_path)
    assert str(garbage) in [r["file_name"] for r in records]


def test_cache_is_reused_then_rebuilt_on_change(tmp_path, monkeypatch):
    base = _synth(tmp_path, "imagenet_22k", num_images=5)
    calls = _counting_build(monkeypatch)
    assert len(catalog.load("imagenet_22k_train", root=tmp_path)) == 5
    assert len(catalog.load("imagenet_22k_train", root=tmp_path)) == 5
    assert len(calls) == 1

    added = base / WNIDS[2] / f"{WNIDS[2]}_50.JPEG"
    added.write_bytes(b"")
    stamp = os.stat(base / WNIDS[2]).st_mtime_ns + 10**9  # a new mtime even on coarse clocks
    os.utime(base / WNIDS[2], ns=(stamp, stamp))
    records = catalog.load("imagenet_22k_train", root=tmp_path)
    assert len(calls) == 2 and str(added) in [r["file_name"] for r in records]

    (base / "n09999999").mkdir()  # a new class folder changes the count
    (base / "n09999999" / "n09999999_1.png").write_bytes(b"")
    records = catalog.load("imagenet_22k_train", root=tmp_path)
    assert len(calls) == 3 and records[-1]["wnid"] == "n09999999" and records[-1]["class_id"] == 5


def test_cache_is_written_atomically(tmp_path):
    base = _synth(tmp_path, "imagenet_22k", num_images=5)
    table = index.cached_index(base, tmp_path / "cache")
    written = list((tmp_path / "cache" / "index").iterdir())
    assert written == [index.cache_path(base, tmp_path / "cache")]  # no temporary file left
    assert index.cached_index(base, tmp_path / "cache").equals(table)


def test_unreadable_cache_is_rebuilt(tmp_path, caplog):
    base = _synth(tmp_path, "imagenet_22k", num_images=5)
    path = index.cache_path(base, tmp_path / "cache")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    assert index.cached_index(base, tmp_path / "cache").num_rows == 5
    assert "unreadable index cache" in caplog.text


def test_build_index_lists_images_only(tmp_path):
    (tmp_path / "n00000001").mkdir()
    (tmp_path / "notaclass").mkdir()
    for name in ("b.JPEG", "a.jpg", "c.PNG", "notes.txt"):
        (tmp_path / "n00000001" / name).write_bytes(b"xy")
    (tmp_path / "notaclass" / "x.JPEG").write_bytes(b"")
    table = index.build_index(tmp_path, workers=2)
    assert table.column("path").to_pylist() == ["n00000001/a.jpg", "n00000001/b.JPEG", "n00000001/c.PNG"]
    assert table.column("size").to_pylist() == [2, 2, 2]


def test_build_index_names_folder_without_classes(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        index.build_index(tmp_path)


def _undecodable_file(folder: Path) -> str:
    """Writes a file whose name is not UTF-8 (byte 0xff) into `folder`; returns the name as it is reported."""
    try:
        with open(os.fsencode(folder) + b"/bad\xff.JPEG", "wb") as f:
            f.write(b"x")
    except OSError:  # some file systems (macOS) refuse names that are not UTF-8
        pytest.skip("this file system refuses file names that are not UTF-8")
    return f"{folder}/bad\\xff.JPEG"


@pytest.mark.parametrize("kind", ["symlink loop", "undecodable name"])
def test_bad_entries_are_skipped_and_reported(tmp_path, caplog, kind):
    base = _synth(tmp_path, "imagenet_22k", num_images=5)
    if kind == "symlink loop":
        (base / WNIDS[0] / "loop.JPEG").symlink_to("loop.JPEG")
        (base / "n09999999").symlink_to("n09999999")  # a class folder that loops, too
        named = [f"{base / WNIDS[0]}/loop.JPEG: a symlink loop", f"{base}/n09999999: a symlink loop"]
    else:
        named = [f"{_undecodable_file(base / WNIDS[1])}: the name is not valid UTF-8"]
    for _ in range(2):  # built, then read from the cache: reported both times
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            records = catalog.load("imagenet_22k_train", root=tmp_path)
        assert len(records) == 5 and {r["wnid"] for r in records} == set(WNIDS)
        assert f"skipped {len(named)} sample(s)" in caplog.text
        assert all(line in caplog.text for line in named), caplog.text
    assert catalog.metadata("imagenet_22k_train", root=tmp_path).extra["wnids"] == WNIDS


def test_words_txt_that_is_not_utf8_still_names_the_classes(tmp_path, caplog):
    base = _synth(tmp_path, "imagenet_22k", num_images=5)
    words = base / "words.txt"
    words.write_bytes(words.read_bytes().replace(b"goldfish", b"gold\xfffish"))
    meta = catalog.metadata("imagenet_22k_train", root=tmp_path)
    assert meta.thing_classes[:2] == ["tench", "gold\ufffdfish"]
    assert f"{words}: not UTF-8" in caplog.text


def _skewed_counts() -> dict[str, int]:
    return {f"n{k:08d}": 1 + (5000 // (k + 1)) % 997 for k in range(200)}  # a heavy head, a long tail


def test_partition_covers_every_class_once_contiguously():
    counts = _skewed_counts()
    wnids, num_partitions = sorted(counts), 7
    parts = [index.partition(counts, i, num_partitions) for i in range(num_partitions)]
    assert [w for part in parts for w in part] == wnids  # contiguous, in order, each exactly once
    assert all(parts)  # partition 0 included, none empty here
    target, largest = sum(counts.values()) / num_partitions, max(counts.values())
    for part in parts:
        assert abs(sum(counts[w] for w in part) - target) <= largest
    assert parts == [index.partition(counts, i, num_partitions) for i in range(num_partitions)]


def test_partition_rows_of_a_table():
    counts = _skewed_counts()
    wnids = [w for w in sorted(counts) for _ in range(counts[w])]
    table = pa.table({"path": [f"{w}/{i}.JPEG" for i, w in enumerate(wnids)], "wnid": wnids})
    # the rows of each partition's classes, in index order (a partition is a run of whole classes)
    rows = [table.filter(pc.is_in(table.column("wnid"), pa.array(index.partition(table, i, 5))))
            for i in range(5)]
    assert pa.concat_tables(rows).equals(table)
    assert [sorted(set(r.column("wnid").to_pylist())) for r in rows] == [index.partition(counts, i, 5) for i in range(5)]


def test_partition_more_partitions_than_classes():
    parts = [index.partition({"n00000001": 3, "n00000002": 1}, i, 4) for i in range(4)]
    assert sorted(w for part in parts for w in part) == ["n00000001", "n00000002"]


@pytest.mark.parametrize("bad", [-1, 4])
def test_partition_bad_index(bad):
    with pytest.raises(ValueError, match=r"not in 0\.\.3"):
        index.partition({"n00000001": 1}, bad, 4)


def test_partition_rejects_ungrouped_table():
    table = pa.table({"wnid": ["n00000001", "n00000002", "n00000001"]})
    with pytest.raises(ValueError, match="not grouped by wnid"):
        index.partition(table, 0, 2)
