"""Pascal-Part: taxonomy and metadata, the .mat layout, and the loader against planted masks."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from partdistill.data import catalog, masks, pascal_mat, pascal_parts

NUM_IMAGES = 8  # annotated images per split of the synthetic copy


@pytest.fixture
def copy(tmp_path):
    """(root, base, planted images) of a synthetic Pascal-Part copy under tmp_path/datasets."""
    base = tmp_path / "datasets" / "pascal_parts"
    pascal_parts.synthesize("pascal_parts", base, NUM_IMAGES, seed=3)
    return tmp_path, base, pascal_parts.synthetic_images(NUM_IMAGES, seed=3)


def _expected_parts(class_name: str, part_names: list[str], part_masks: list[np.ndarray]) -> dict:
    """Merged part id -> union of the planted masks whose raw names merge to it."""
    expected: dict[int, np.ndarray] = {}
    for raw, mask in zip(part_names, part_masks):
        pid = pascal_parts.PART_CLASSES.index(pascal_parts.taxonomy()[class_name][raw.split("_")[0]])
        expected[pid] = expected.get(pid, np.zeros_like(mask)) | mask
    return expected


def test_taxonomy_merged_names_are_the_50_part_classes():
    table = pascal_parts.taxonomy()
    merged = {m for parts in table.values() for m in parts.values()}
    assert merged == set(pascal_parts.PART_CLASSES), "taxonomy yaml and PART_CLASSES disagree"
    assert len(pascal_parts.PART_CLASSES) == len(set(pascal_parts.PART_CLASSES)) == 50


def test_taxonomy_mismatch_fails_naming_the_file(tmp_path):
    bad = tmp_path / "taxonomy.yaml"
    bad.write_text(pascal_parts.TAXONOMY_PATH.read_text().replace('screen: "screen"', 'screen: "display"'))
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}.*'display'.*'screen'"):
        pascal_parts.taxonomy(bad)


def test_metadata(copy):
    root, _, _ = copy
    meta = catalog.metadata("pascal_parts_train", root=root)
    assert meta.thing_classes[:3] == ["aeroplane", "bicycle", "bird"] and len(meta.thing_classes) == 20
    assert meta.thing_classes[10] == "diningtable" and meta.thing_classes[-1] == "tvmonitor"
    assert meta.part_classes[:3] == ["body", "stern", "wing"] and len(meta.part_classes) == 50
    assert meta.part_classes[23] == "license plate" and meta.part_classes[-1] == "screen"
    partless = {meta.thing_classes[c] for c, parts in meta.parts_of.items() if not parts}
    assert partless == {"boat", "chair", "diningtable", "sofa"}
    name = meta.part_classes.__getitem__
    assert [name(p) for p in meta.parts_of[4]] == ["body", "cap"]  # bottle, sorted by id
    assert [name(p) for p in meta.parts_of[19]] == ["screen"]
    assert all(parts == sorted(parts) for parts in meta.parts_of.values())


def test_mat_layout_with_default_loadmat_options(copy):
    _, base, images = copy
    image = next(i for i in images if set(i.class_names) & {"boat", "chair", "diningtable", "sofa"})
    anno = scipy.io.loadmat(str(base / "annotations" / f"{image.image_id}.mat"))["anno"]
    assert anno.shape == (1, 1) and anno[0, 0][0][0] == image.image_id
    # the released structure (part_taxonomies.md), field names and order included
    assert anno.dtype.names == ("imname", "objects") and anno[0, 0][1].shape == (1, len(image.class_names))
    objects = anno[0, 0][1][0]
    assert objects.dtype.names == ("class", "classind", "mask", "parts")
    planted_objects = zip(objects, image.class_names, image.scene.objects, image.part_names)
    for obj, name, planted, part_names in planted_objects:
        assert obj["class"][0] == ("table" if name == "diningtable" else name)
        assert obj["classind"].dtype == np.float64  # a MATLAB double
        assert obj["classind"][0, 0] == pascal_parts.THING_CLASSES.index(name) + 1
        assert obj["mask"].dtype == np.uint8 and np.array_equal(obj["mask"], planted.mask)
        if not part_names:
            assert obj["parts"].shape == (0, 0)
            continue
        parts = obj["parts"][0]
        assert parts.dtype.names == ("part_name", "mask") and obj["parts"].shape == (1, len(part_names))
        assert [p["part_name"][0] for p in parts] == part_names
        assert all(np.array_equal(p["mask"], m) for p, m in zip(parts, planted.part_masks))


def test_round_trip_equals_planted(copy, caplog):
    root, base, images = copy
    caplog.set_level(logging.INFO)
    records = catalog.load("pascal_parts_val", root=root)
    planted = [i for i in images if i.split == "val"]
    assert [r["image_id"] for r in records] == [i.image_id for i in planted]
    merged_pairs = 0
    for record, image in zip(records, planted):
        assert record["file_name"] == str(base / "images" / "JPEGImages" / f"{image.image_id}.jpg")
        assert (record["height"], record["width"]) == image.scene.image.shape[:2]
        assert len(record["annotations"]) == len(image.scene.objects)
        planted_objects = zip(record["annotations"], image.class_names, image.scene.objects, image.part_names)
        for ann, name, obj, part_names in planted_objects:
            assert ann["category_id"] == pascal_parts.THING_CLASSES.index(name)
            assert np.array_equal(masks.decode(ann["segmentation"]), obj.mask)
            assert ann["bbox"] == masks.bbox_xyxy(obj.mask) and ann["bbox_mode"] == 0
            assert all(m.any() for m in obj.part_masks)  # else the loader would rightly drop a part
            expected = _expected_parts(name, part_names, obj.part_masks)
            merged_pairs += len(part_names) - len(expected)
            assert [p["category_id"] for p in ann["parts"]] == sorted(expected)
            for part in ann["parts"]:
                assert np.array_equal(masks.decode(part["segmentation"]), expected[part["category_id"]])
    # the copy exercises what the loader must handle
    names = {n for i in planted for n in i.class_names}
    assert names & {"boat", "chair", "diningtable", "sofa"} and merged_pairs > 0
    assert any("_" in n for i in planted for parts in i.part_names for n in parts)
    assert "1 of 9 listed image(s) have no part annotation" in caplog.text
    assert "skipped" not in caplog.text


def test_one_object_one_part_and_unknown_names(tmp_path, caplog):
    """squeeze_me turns a 1-element struct array into the struct itself: both shapes must load."""
    base = tmp_path / "datasets" / "pascal_parts"
    pascal_parts.synthesize("pascal_parts", base, 1, seed=0)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    screen = mask.copy()
    screen[5:8] = False
    val_id = (base / "images/ImageSets/Main/val.txt").read_text().split()[0]
    Image.new("RGB", (40, 30)).save(base / "images/JPEGImages" / f"{val_id}.jpg")  # the masks' size
    pascal_mat.write_mat(
        base / "annotations" / f"{val_id}.mat", val_id,
        [("tvmonitor", 20, mask, [("screen", screen), ("frame", mask & ~screen)])],
    )  # fmt: skip
    records = catalog.load("pascal_parts_val", root=tmp_path)
    [ann] = records[0]["annotations"]
    assert ann["category_id"] == 19 and [p["category_id"] for p in ann["parts"]] == [49]
    assert np.array_equal(masks.decode(ann["parts"][0]["segmentation"]), screen)
    assert "unknown part name 'frame'" in caplog.text
    one_part = [("tvmonitor", 20, mask, [("screen", screen)])]
    pascal_mat.write_mat(base / "annotations" / f"{val_id}.mat", val_id, one_part)
    [ann] = catalog.load("pascal_parts_val", root=tmp_path)[0]["annotations"]
    assert [p["category_id"] for p in ann["parts"]] == [49]


def test_corrupt_mat_is_skipped_and_named(copy, caplog):
    root, base, images = copy
    bad = base / "annotations" / f"{images[0].image_id}.mat"
    bad.write_bytes(b"\x00garbage, not a MATLAB file" * 20)
    records = catalog.load("pascal_parts_train", root=root)
    assert len(records) == NUM_IMAGES - 1 and images[0].image_id not in {r["image_id"] for r in records}
    assert "pascal_parts_train: skipped 1 sample(s)" in caplog.text
    assert str(bad) in caplog.text and "unreadable .mat file" in caplog.text


def test_image_missing_or_of_another_size_than_its_masks_is_skipped_and_named(copy, caplog):
    root, base, images = copy
    first, second = (base / "images" / "JPEGImages" / f"{i.image_id}.jpg" for i in images[:2])
    first.unlink()
    height, width = images[1].scene.image.shape[:2]
    Image.new("RGB", (width + 1, height)).save(second)
    records = catalog.load("pascal_parts_train", root=root)
    assert [r["image_id"] for r in records] == [i.image_id for i in images[2:NUM_IMAGES]]
    assert "pascal_parts_train: skipped 2 sample(s)" in caplog.text
    assert f"{images[0].image_id}.mat: its image {first} is missing" in caplog.text
    assert f"its image {second} is {height}x{width + 1} pixels where the annotation is {height}x{width}" in caplog.text
