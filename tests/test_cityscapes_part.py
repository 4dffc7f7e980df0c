"""Cityscapes-Panoptic-Parts: uid decoding, loading a synthesized copy back, and skipped samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from partdistill.data import catalog, cityscapes_part
from partdistill.data.masks import decode

SEED = 3
NUM_IMAGES = 4


@pytest.fixture
def base(tmp_path) -> Path:
    """A synthesized copy at tmp_path/datasets/cityscapes_part."""
    path = tmp_path / "datasets" / "cityscapes_part"
    cityscapes_part.synthesize("cityscapes_part", path, NUM_IMAGES, SEED)
    return path


def add_sample(base: Path, uids: np.ndarray, name: str, image: bool = True) -> str:
    """Writes a hand-made train label (and an image) into aachen; returns its image_id."""
    image_id = f"aachen_000000_{name}"
    tifffile.imwrite(base / f"gtFinePanopticParts/train/aachen/{image_id}_gtFinePanopticParts.tif", uids)
    if image:
        pixels = np.zeros((*uids.shape[:2], 3), np.uint8)
        Image.fromarray(pixels).save(base / f"leftImg8bit/train/aachen/{image_id}_leftImg8bit.png")
    return image_id


def load_train(tmp_path: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in catalog.load("cityscapes_part_train", root=tmp_path)}


def test_decode_uids_by_hand():
    uids = np.array([7, 24001, 2600203, 0, 26000, 2400000, 2812399, 500, 10_000_000])
    sid, iid, pid = cityscapes_part.decode_uids(uids)
    assert sid.tolist() == [7, 24, 26, 0, 26, 24, 28, -1, -1]
    assert iid.tolist() == [-1, 1, 2, -1, 0, 0, 123, -1, -1]
    assert pid.tolist() == [-1, -1, 3, -1, -1, 0, 99, -1, -1]


def test_metadata_lists_5_classes_and_23_parts(base, tmp_path):
    meta = catalog.metadata("cityscapes_part_val", root=tmp_path)
    assert meta.thing_classes == ["person", "rider", "car", "truck", "bus"]
    assert len(meta.part_classes) == 23
    assert meta.part_classes[:5] == ["person-torso", "person-head", "person-arm", "person-leg", "rider-torso"]
    assert meta.part_classes[8:13] == ["car-window", "car-wheel", "car-light", "car-license plate", "car-chassis"]
    assert meta.part_classes[-1] == "bus-chassis"
    assert meta.parts_of[1] == [4, 5, 6, 7] and meta.parts_of[4] == [18, 19, 20, 21, 22]
    assert meta.extra["sids"] == [24, 25, 26, 27, 28]


def expected_objects(scene) -> dict[tuple[int, int], tuple[np.ndarray, dict[int, np.ndarray]]]:
    """(sid, iid) -> (object mask, {global part id: mask}) as planted; the topmost and bottommost
    rows of an object are written without a part label, so they belong to no part."""
    base_id = {0: 0, 1: 4, 2: 8, 3: 13, 4: 18}
    counts: dict[int, int] = {}
    out = {}
    for obj in scene.objects:
        iid = counts.get(obj.object_class, 0)
        counts[obj.object_class] = iid + 1
        rows = np.nonzero(obj.mask.any(axis=1))[0]
        unlabeled = np.zeros_like(obj.mask)
        unlabeled[[rows[0], rows[-1]]] = True
        parts = {base_id[obj.object_class] + p: m & ~unlabeled for p, m in enumerate(obj.part_masks)}
        out[(24 + obj.object_class, iid)] = (obj.mask, {p: m for p, m in parts.items() if m.any()})
    return out


@pytest.mark.parametrize("split", ["train", "val"])
def test_round_trip_equals_planted(base, tmp_path, split):
    records = catalog.load(f"cityscapes_part_{split}", root=tmp_path)
    planted = cityscapes_part.planted(split, NUM_IMAGES, SEED)
    assert [r["image_id"] for r in records] == sorted(image_id for _, image_id, _ in planted)
    by_id = {r["image_id"]: r for r in records}
    for city, image_id, scene in planted:
        record = by_id[image_id]
        assert record["file_name"] == str(base / f"leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png")
        assert Path(record["file_name"]).is_file()
        assert (record["height"], record["width"]) == scene.image.shape[:2]
        expected = expected_objects(scene)
        assert [(a["sid"], a["iid"]) for a in record["annotations"]] == sorted(expected)
        for ann in record["annotations"]:
            mask, parts = expected[(ann["sid"], ann["iid"])]
            assert ann["category_id"] == ann["sid"] - 24
            assert np.array_equal(decode(ann["segmentation"]), mask)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and ann["bbox_mode"] == 0
            assert [p["category_id"] for p in ann["parts"]] == sorted(parts)
            for part in ann["parts"]:
                assert np.array_equal(decode(part["segmentation"]), parts[part["category_id"]])


def test_int32_and_uint32_labels_both_load(base, tmp_path):
    dtypes = {tifffile.imread(p).dtype for p in (base / "gtFinePanopticParts/train").glob("*/*.tif")}
    assert dtypes == {np.dtype(np.int32), np.dtype(np.uint32)}  # the synthesized copy has both
    uids = np.full((6, 8), 7, np.int64)
    uids[1:3, 1:4] = 2400102  # person 1, head
    uids[3, 1:4] = 24001  # person 1, pixels without a part label
    uids[4, 1] = 2400100  # pid 0: in the object, in no part
    uids[4, 2] = 2400199  # not a person part: in the object, in no part
    uids[1:4, 6] = 33000  # bicycle: a thing without parts, not an object here
    signed = add_sample(base, uids.astype(np.int32), "900000")
    unsigned = add_sample(base, uids.astype(np.uint32), "900001")
    records = load_train(tmp_path)
    for image_id in (signed, unsigned):
        (person,) = records[image_id]["annotations"]
        assert (person["category_id"], person["sid"], person["iid"]) == (0, 24, 1)
        assert np.array_equal(decode(person["segmentation"]), (uids // 100_000 == 24) | (uids // 1000 == 24))
        (head,) = person["parts"]
        assert head["category_id"] == 1 and np.array_equal(decode(head["segmentation"]), uids == 2400102)


def test_float32_label_is_skipped_and_named(base, tmp_path, caplog):
    path = base / "gtFinePanopticParts/train/aachen/aachen_000000_900000_gtFinePanopticParts.tif"
    add_sample(base, np.full((4, 4), 7, np.float32), "900000")
    records = load_train(tmp_path)
    assert "aachen_000000_900000" not in records and len(records) == NUM_IMAGES
    assert "skipped 1 sample" in caplog.text and str(path) in caplog.text and "float32" in caplog.text


def test_unreadable_label_is_skipped(base, tmp_path, caplog):
    image_id = add_sample(base, np.zeros((4, 4), np.uint32), "900000")
    (base / f"gtFinePanopticParts/train/aachen/{image_id}_gtFinePanopticParts.tif").write_bytes(b"")
    assert image_id not in load_train(tmp_path)
    assert "unreadable label TIFF" in caplog.text


def test_label_without_image_is_skipped(base, tmp_path, caplog):
    image_id = add_sample(base, np.full((4, 4), 7, np.uint32), "900000", image=False)
    records = load_train(tmp_path)
    assert image_id not in records and len(records) == NUM_IMAGES
    assert f"{image_id}_leftImg8bit.png is missing" in caplog.text


def test_label_of_another_size_than_its_image_is_skipped_and_named(base, tmp_path, caplog):
    image_id = add_sample(base, np.full((4, 6), 7, np.uint32), "900000")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(base / f"leftImg8bit/train/aachen/{image_id}_leftImg8bit.png")
    records = load_train(tmp_path)
    assert image_id not in records and len(records) == NUM_IMAGES
    label = base / f"gtFinePanopticParts/train/aachen/{image_id}_gtFinePanopticParts.tif"
    assert f"{label}: its image {base}/leftImg8bit/train/aachen/{image_id}_leftImg8bit.png is 4x5 pixels " \
        "where the annotation is 4x6" in caplog.text


def test_leftImage8bit_alias(base, tmp_path):
    (base / "leftImg8bit").rename(base / "leftImage8bit")
    records = load_train(tmp_path)
    assert len(records) == NUM_IMAGES
    for record in records.values():
        assert "/leftImage8bit/train/" in record["file_name"] and Path(record["file_name"]).is_file()


def test_synthesize_is_deterministic(tmp_path):
    for name in ("a", "b"):
        cityscapes_part.synthesize("cityscapes_part", tmp_path / name, 2, SEED)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_lzw_label_loads_without_imagecodecs(base, tmp_path):
    uids = np.full((4, 6), 7, np.int32)
    uids[1:3, 2:5] = 2600205  # car 2, chassis
    image_id = add_sample(base, uids, "900000")
    path = base / f"gtFinePanopticParts/train/aachen/{image_id}_gtFinePanopticParts.tif"
    Image.fromarray(uids).save(path, compression="tiff_lzw")  # tifffile needs imagecodecs for LZW; PIL does not
    (car,) = load_train(tmp_path)[image_id]["annotations"]
    assert (car["category_id"], car["iid"]) == (2, 2) and car["parts"][0]["category_id"] == 12
    assert np.array_equal(decode(car["segmentation"]), uids == 2600205)
