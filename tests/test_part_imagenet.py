"""PartImageNet: round trip of the synthetic copy, skipped annotations, and the valtest preparation."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from partdistill.data import catalog, coco, masks, part_imagenet
from partdistill.data.planted import part_appearance
from partdistill.errors import UserError


@pytest.fixture
def part_root(tmp_path):
    part_imagenet.synthesize("part_imagenet", tmp_path / "datasets/part_imagenet", num_images=8, seed=0)
    return tmp_path


def expected_parts(base, split):
    """image id -> {part class index: union mask}, rasterised straight from the JSON polygons."""
    data = json.loads((base / f"{split}.json").read_text())
    index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    out = {}
    for ann in data["annotations"]:
        polygon = ann["segmentation"][0]
        if len(polygon) < 6:
            continue
        mask = masks.polygons_to_mask([polygon], *sizes[ann["image_id"]])
        parts = out.setdefault(ann["image_id"], {})
        parts[index[ann["category_id"]]] = parts.get(index[ann["category_id"]], False) | mask
    return out


def test_round_trip(part_root):
    base = part_root / "datasets/part_imagenet"
    records = catalog.load("part_imagenet_train", root=part_root)
    meta = catalog.metadata("part_imagenet_train", root=part_root)
    expected = expected_parts(base, "train")
    assert len(records) == 8 and [r["image_id"] for r in records] == list(range(1, 9))
    for record in records:
        (obj,) = record["annotations"]
        assert meta.thing_classes[obj["category_id"]] == obj["wnid"] == record["file_name"].split("/")[-2]
        assert obj["supercategory"] == part_imagenet.SYNTH_SYNSETS["train"][obj["wnid"]]
        parts = {p["category_id"]: masks.decode(p["segmentation"]) for p in obj["parts"]}
        assert parts.keys() == expected[record["image_id"]].keys()
        for cat, mask in parts.items():
            np.testing.assert_array_equal(mask, expected[record["image_id"]][cat])
            assert meta.part_classes[cat].startswith(obj["supercategory"] + " ")
            assert cat in meta.parts_of[obj["category_id"]]
        np.testing.assert_array_equal(masks.decode(obj["segmentation"]), np.logical_or.reduce(list(parts.values())))


def test_parts_are_where_their_texture_was_planted(part_root):
    (record, *_) = catalog.load("part_imagenet_val", root=part_root)
    image = np.asarray(Image.open(record["file_name"]), dtype=np.float32)
    (obj,) = record["annotations"]
    supers = list(part_imagenet.TAXONOMY)
    first = sum(len(part_imagenet.TAXONOMY[s]) for s in supers[: supers.index(obj["supercategory"])])
    for part in obj["parts"]:
        mask = masks.decode(part["segmentation"])
        colour, _, _ = part_appearance(supers.index(obj["supercategory"]), part["category_id"] - first)
        assert np.abs(image[mask].mean(0) - colour).max() < 20


def test_metadata_has_the_40_parts(part_root):
    meta = catalog.metadata("part_imagenet_train", root=part_root)
    assert len(meta.part_classes) == 40 and len(part_imagenet.categories()) == 40
    assert len(meta.extra["supercategories"]) == 11
    assert meta.thing_classes == sorted(part_imagenet.SYNTH_SYNSETS["train"])


def test_degenerate_polygon_and_missing_image_are_skipped_and_named(part_root, caplog):
    base = part_root / "datasets/part_imagenet"
    missing = base / "train/n02085620/n02085620_1000.JPEG"  # its class folder keeps a second image
    missing.unlink()
    with caplog.at_level(logging.WARNING):
        records = catalog.load("part_imagenet_train", root=part_root)
    assert len(records) == 7
    assert "part_imagenet_train: skipped 2 sample(s)" in caplog.text
    assert f"{missing}: image missing" in caplog.text
    assert "train.json#annotation-" in caplog.text and "degenerate" in caplog.text


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_annotation_of_an_unknown_category_is_skipped_and_named(part_root, caplog):
    train = part_root / "datasets/part_imagenet/train.json"
    _edit_json(train, lambda data: data["annotations"][0].update(category_id=999))
    records = catalog.load("part_imagenet_train", root=part_root)
    assert len(records) == 8 and catalog.metadata("part_imagenet_train", root=part_root).part_classes
    assert f"{train}#annotation-1: category_id 999 is not in the file's categories" in caplog.text
    assert "part_imagenet_train: skipped 2 sample(s)" in caplog.text  # with the release-like degenerate one


def test_image_of_another_size_than_the_json_says_is_skipped_and_named(part_root, caplog):
    base = part_root / "datasets/part_imagenet"
    _edit_json(base / "train.json", lambda data: data["images"][0].update(height=95))
    records = catalog.load("part_imagenet_train", root=part_root)
    assert [r["image_id"] for r in records] == list(range(2, 9))
    assert "n02085620_1000.JPEG: image 96x128 pixels where the annotation is 95x128 (listed in train.json" in caplog.text


@pytest.mark.parametrize("damage, named", [
    (lambda path: _edit_json(path, lambda data: data.update(images={"1": {}})), "'images' is a dict, not a list"),
    (lambda path: path.write_text(path.read_text()[:200]), "is not valid JSON"),
], ids=["images not a list", "truncated"])
def test_a_broken_annotation_file_stops_naming_it(part_root, damage, named):
    train = part_root / "datasets/part_imagenet/train.json"
    damage(train)
    for read in (catalog.load, catalog.metadata):
        with pytest.raises(UserError, match=re.escape(str(train)) + ".*" + re.escape(named)):
            read("part_imagenet_train", root=part_root)


def test_release_category_names_come_through_unchanged(part_root):
    """The release names each part with its supercategory ("Quadruped Head"): no prefix is added."""
    val = part_root / "datasets/part_imagenet/val.json"
    categories = json.loads(val.read_text())["categories"]
    assert categories[0] == {"id": 0, "name": "Quadruped Head", "supercategory": "Quadruped"}
    assert categories[39] == {"id": 39, "name": "Bottle Mouth", "supercategory": "Bottle"}
    assert [c["id"] for c in categories] == list(range(40))
    meta = catalog.metadata("part_imagenet_val", root=part_root)
    assert meta.part_classes == [c["name"] for c in categories]
    _edit_json(val, lambda data: data["categories"][1].update(name="Body of a quadruped"))
    assert catalog.metadata("part_imagenet_val", root=part_root).part_classes[:2] == [
        "Quadruped Head", "Body of a quadruped"]


def test_prepare_valtest_merges_with_unique_stable_ids(part_root):
    base = part_root / "datasets/part_imagenet"
    summary = part_imagenet.prepare_valtest(base)
    assert "valtest: 16 images (val 8 + test 8)" in summary
    merged = coco.read_json(base / "valtest.json")
    ids = [i["id"] for i in merged["images"]]
    assert len(set(ids)) == 16 and ids[:8] == list(range(1, 9)) and ids[8:] == list(range(11, 19))
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])
    first = merged
    part_imagenet.prepare_valtest(base)  # idempotent
    assert coco.read_json(base / "valtest.json") == first
    assert sorted(p.name for p in (base / "valtest").iterdir()) == sorted(
        list(part_imagenet.SYNTH_SYNSETS["val"]) + list(part_imagenet.SYNTH_SYNSETS["test"])
    )
    assert not list(base.glob(".valtest*")) and not list(base.glob(".valtest.json*"))
    records = catalog.load("part_imagenet_valtest", root=part_root)
    assert len(records) == 16 and all(r["annotations"] for r in records)


def test_prepare_refuses_what_it_cannot_merge(part_root):
    base = part_root / "datasets/part_imagenet"
    (base / "test.json").rename(base / "test.json.bak")
    with pytest.raises(part_imagenet.PrepareError, match="test.json and .*test/ are needed"):
        part_imagenet.prepare_valtest(base)
    data = json.loads((base / "test.json.bak").read_text())
    data["images"].append(dict(data["images"][0]))
    (base / "test.json").write_text(json.dumps(data))
    with pytest.raises(part_imagenet.PrepareError, match="duplicate images ids"):
        part_imagenet.prepare_valtest(base)
    del data["images"][-1], data["annotations"][0]["image_id"]
    (base / "test.json").write_text(json.dumps(data))
    with pytest.raises(part_imagenet.PrepareError, match="test.json has annotations without an integer id or image_id"):
        part_imagenet.prepare_valtest(base)
    assert not (base / "valtest.json").exists() and not (base / "valtest").exists()
