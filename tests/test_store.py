"""The pseudo-label store: round trip, all-or-nothing shards, resume, identity checks, lazy readers."""
from __future__ import annotations

import builtins
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from partdistill.data import masks
from partdistill.errors import UserError
from partdistill.store import Store, StoreMismatch, StoreMissing, class_key, identity_hash, partition_records

IDENTITY = {"stage": {"k": 4, "kmeans": {"iters": 20}}, "data": "synthetic_train", "upstream": "abc"}
CLASSES = [f"n{i:08d}" for i in range(6)]


def _record(wnid: str, j: int) -> dict:
    mask = np.zeros((8, 10), bool)
    mask[j % 8 :, : j % 10 + 1] = True
    return {"file_name": f"/data/{wnid}/{j}.jpg", "class_key": wnid, "score": np.float32(0.5) + j,
            "segmentation": masks.encode(mask)}


def _shard_classes(i: int, p: int) -> list[str]:
    return CLASSES[i * len(CLASSES) // p : (i + 1) * len(CLASSES) // p]


def _write(store: Store, i: int) -> None:
    classes = _shard_classes(i, store.num_partitions)
    with store.write_shard(i, classes=classes) as shard:
        for wnid in classes:
            for j in range(3):
                shard.add(_record(wnid, j))
        shard.skip(f"/data/{i}/broken.jpg", "unreadable")
        shard.add_array("features", np.arange(12, dtype=np.float32).reshape(3, 4) + i)
        shard.add_array("ids", np.array([i, i + 1], np.int64))


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (manifests without their `created` time)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "manifest.json":
                manifest = json.loads(data)
                manifest.pop("created")
                data = json.dumps(manifest).encode()
            out[str(path.relative_to(folder))] = data
    return out


def test_round_trip(tmp_path):
    store = Store(tmp_path, "pixel_grouping", 2, IDENTITY)
    assert store.incomplete() == [0, 1] and store.complete() == []
    for i in range(2):
        _write(store, i)
    assert store.complete() == [0, 1] and store.is_complete(1)
    records = list(store.records())
    assert [r["file_name"] for r in records] == [_record(w, j)["file_name"] for w in CLASSES for j in range(3)]
    assert records[4]["score"] == 1.5
    assert np.array_equal(masks.decode(records[4]["segmentation"]), masks.decode(_record(CLASSES[1], 1)["segmentation"]))
    arrays = store.arrays(1)
    assert arrays["features"].dtype == np.float32 and np.array_equal(arrays["features"][0], [1, 2, 3, 4])
    assert arrays["ids"].tolist() == [1, 2]
    manifest = store.manifest(0)
    assert manifest["counts"] == {"records": 9, "skipped": 1}
    assert manifest["skipped"] == [["/data/0/broken.jpg", "unreadable"]]
    assert manifest["classes"] == CLASSES[:3] and manifest["identity_hash"] == identity_hash(IDENTITY)
    summary = store.summary()
    assert (summary["complete"], summary["incomplete"], summary["records"], summary["skipped"]) == ([0, 1], [], 18, 2)
    header = json.loads((tmp_path / "pixel_grouping" / "store.json").read_text())
    assert header["num_partitions"] == 2 and header["identity"] == IDENTITY and header["format_version"] == 1
    reopened = Store.open(tmp_path, "pixel_grouping", store.hash)
    assert reopened.num_partitions == 2 and reopened.hash == store.hash and reopened.complete() == [0, 1]


def test_shard_without_arrays_or_classes(tmp_path):
    store = Store(tmp_path, "s", 1, {})
    with store.write_shard(0) as shard:
        shard.add({"x": 1})
    assert store.arrays(0) == {} and store.manifest(0)["classes"] is None
    assert list(store.records({"n1"})) == []  # no class_key: filtered out


def test_exception_leaves_no_shard(tmp_path):
    store = Store(tmp_path, "s", 2, IDENTITY)
    with pytest.raises(RuntimeError, match="boom"):
        with store.write_shard(0, classes=CLASSES[:3]) as shard:
            shard.add(_record(CLASSES[0], 0))
            raise RuntimeError("boom")
    assert not store.is_complete(0)
    assert sorted(p.name for p in store.folder.iterdir()) == ["store.json"]
    assert list(store.records()) == []


def test_killed_writer_leftover_is_cleaned(tmp_path):
    store = Store(tmp_path, "s", 2, IDENTITY)
    leftover = store.folder / "part-0-of-2.tmp-12345"
    leftover.mkdir()
    (leftover / "records.jsonl").write_text('{"half":')
    assert not store.is_complete(0)
    _write(store, 0)
    assert not leftover.exists() and store.is_complete(0)
    assert sorted(p.name for p in store.folder.iterdir()) == ["part-0-of-2", "store.json"]


def test_writer_refuses_complete_shard_and_bad_records(tmp_path):
    store = Store(tmp_path, "s", 2, IDENTITY)
    _write(store, 0)
    with pytest.raises(FileExistsError, match="already complete"):
        with store.write_shard(0):
            pass
    with pytest.raises(ValueError, match="class_key"):
        with store.write_shard(1, classes=["n1"]) as shard:
            shard.add({"class_key": "other"})
    with pytest.raises(ValueError, match="object dtype"):
        with store.write_shard(1) as shard:
            shard.add_array("bad", np.array([{}], dtype=object))
    with pytest.raises(TypeError, match="add_array"):
        with store.write_shard(1) as shard:
            shard.add({"a": np.zeros(2)})
    assert store.complete() == [0] and len(list(store.folder.iterdir())) == 2


def test_resume_is_byte_identical(tmp_path):
    whole = Store(tmp_path / "a", "s", 4, IDENTITY)
    for i in range(4):
        _write(whole, i)

    def run(store: Store, fail_after: int | None = None) -> None:
        for n, i in enumerate(store.incomplete()):
            if n == fail_after:
                raise KeyboardInterrupt  # the job is killed
            _write(store, i)

    with pytest.raises(KeyboardInterrupt):
        run(Store(tmp_path / "b", "s", 4, IDENTITY), fail_after=2)
    resumed = Store(tmp_path / "b", "s", 4, IDENTITY)
    assert resumed.complete() == [0, 1]
    run(resumed)
    assert resumed.complete() == [0, 1, 2, 3]
    assert _files(whole.folder) == _files(resumed.folder)


WRITER = """
import logging, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_store as t
from partdistill.store import Store

logging.basicConfig(level=logging.INFO, format="%(message)s")
root, me = Path({root!r}), sys.argv[1]
(root / f"ready-{{me}}").touch()
while not (root / "go").exists():  # both writers start together
    time.sleep(0.01)
store = Store(root / "store", "s", 3, t.IDENTITY)
for i in range(3):  # as stages.common.run_partitions does
    if store.is_complete(i):
        continue
    with store.write_shard(i, classes=t._shard_classes(i, 3)) as shard:
        for wnid in t._shard_classes(i, 3):
            for j in range(3):
                time.sleep(0.1)  # a slow shard: the other writer arrives while this one writes it
                shard.add(t._record(wnid, j))
"""


def test_two_concurrent_writers_finish_and_write_the_store_of_one(tmp_path):
    one = Store(tmp_path / "one", "s", 3, IDENTITY)
    for i in range(3):
        with one.write_shard(i, classes=_shard_classes(i, 3)) as shard:
            for wnid in _shard_classes(i, 3):
                for j in range(3):
                    shard.add(_record(wnid, j))
    script = WRITER.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    writers = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{name}").exists() for name in ("a", "b")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outputs = [w.communicate(timeout=120) for w in writers]
    for writer, (out, err) in zip(writers, outputs):
        assert writer.returncode == 0 and "Traceback" not in err, err
    logs = "".join(err for _, err in outputs)
    assert "is being written by" in logs  # they did meet on a shard
    assert _files(one.folder) == _files(tmp_path / "store" / "s")


def test_identity_mismatch_is_refused(tmp_path):
    Store(tmp_path, "s", 2, IDENTITY)
    Store(tmp_path, "s", 2, json.loads(json.dumps(IDENTITY)))  # same identity: resume
    changed = {**IDENTITY, "stage": {"k": 8, "kmeans": {"iters": 20}}, "extra": True}
    with pytest.raises(StoreMismatch) as info:
        Store(tmp_path, "s", 2, changed)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert identity_hash(IDENTITY) in message and identity_hash(changed) in message
    assert "stage.k: 4 (stored) vs 8 (now)" in message and "extra: <missing> (stored) vs true (now)" in message
    assert "kmeans" not in message and str(tmp_path / "s") in message and "run_dir" in message
    with pytest.raises(StoreMismatch, match="num_partitions: 2 \\(stored\\) vs 3 \\(now\\)"):
        Store(tmp_path, "s", 3, IDENTITY)


def test_open_checks_expected_hash_and_presence(tmp_path):
    store = Store(tmp_path, "s", 1, IDENTITY)
    with pytest.raises(StoreMismatch) as info:
        Store.open(tmp_path, "s", "0123456789abcdef")
    assert "0123456789abcdef" in str(info.value) and store.hash in str(info.value)
    with pytest.raises(StoreMissing, match="python launch.py stage=object_masks") as info:
        Store.open(tmp_path, "object_masks")
    assert str(tmp_path / "object_masks") in str(info.value) and isinstance(info.value, UserError)
    with pytest.raises(StoreMissing, match="stage=s"):
        store.manifest(0)


def test_records_are_lazy(tmp_path, monkeypatch):
    store = Store(tmp_path, "s", 3, IDENTITY)
    for i in range(3):
        _write(store, i)
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened.append(Path(file).parent.name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    records = store.records()
    assert iter(records) is records and opened == []
    assert next(records)["class_key"] == CLASSES[0]
    assert opened == ["part-0-of-3"]


def test_class_filtering(tmp_path, monkeypatch):
    store = Store(tmp_path, "s", 3, IDENTITY)
    for i in range(3):
        _write(store, i)
    wanted = {CLASSES[3], "elsewhere"}
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(Path(f)) or real_open(f, *a, **k))
    records = list(store.records(wanted))
    assert {r["class_key"] for r in records} == {CLASSES[3]} and len(records) == 3
    # only shard 1 (classes 2 and 3) has its records read
    assert [p.parent.name for p in opened if p.name == "records.jsonl"] == ["part-1-of-3"]


def test_partition_records():
    records = [{"wnid": w, "image_id": f"{w}-{j}"} for w in CLASSES for j in range(2 + CLASSES.index(w))]
    records.reverse()  # input order is kept within a partition
    for p in (1, 2, 3, 5):
        parts = [partition_records(records, i, p) for i in range(p)]
        assert parts[0]
        ids = [r["image_id"] for part in parts for r in part]
        assert Counter(ids) == Counter(r["image_id"] for r in records)
        keys = [sorted({class_key(r) for r in part}) for part in parts]
        flat = [k for ks in keys for k in ks]
        assert flat == sorted(flat) and len(flat) == len(set(flat))  # whole classes, contiguous
    assert class_key({"annotations": [{"category_id": 7}, {"category_id": 2}]}) == "class-7"
    assert class_key({"annotations": []}) == "all" and class_key({"wnid": "n1", "annotations": [{}]}) == "n1"


def test_store_show_counts_the_shards_and_draws_the_pseudo_labels(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from partdistill import cli
    from partdistill.data import masks
    from partdistill.evaluation.pseudo_labels import label_map

    image = tmp_path / "a.png"
    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(image)
    left, right = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
    left[:, :3], right[:, 3:5] = True, True
    record = {"image_id": "a", "file_name": str(image), "height": 4, "width": 6, "class_key": "n01",
              "objects": [{"segmentation": masks.encode(left | right),
                           "parts": [{"segmentation": masks.encode(left), "label": 5},
                                     {"segmentation": masks.encode(right), "label": 1}]}]}
    labels, names = label_map(record)
    assert names == {5: "part 5", 1: "part 1"}
    assert labels[:, :3].tolist() == [[5] * 3] * 4 and labels[:, 3:5].tolist() == [[1] * 2] * 4
    assert (labels[:, 5] == -1).all()
    store = Store(tmp_path / "run/store", "part_ranking", 2, {"test": 1})
    with store.write_shard(0, classes=["n01"]) as shard:
        shard.add(record)
    assert cli.main(["store", "show", str(tmp_path / "run"), "part_ranking"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 partition(s) complete, 1 records, 0 skipped" in out and "incomplete: 1" in out
    png = tmp_path / "run" / "overlays" / "part_ranking" / "n01_a.png"  # beside the store, not inside it
    assert not (store.folder / "overlays").exists()
    with Image.open(png) as drawn:
        assert drawn.height >= 256 and drawn.width > 2 * 6 * 64  # image | overlay, each upscaled 64x
    assert cli.main(["store", "show", str(tmp_path / "nowhere"), "part_ranking"]) == 2
    assert "stage=part_ranking" in capsys.readouterr().err
