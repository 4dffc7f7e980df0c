"""The built-in synthetic data set: objects and parts round-trip, and parts are visible in pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from partdistill.data import catalog, masks, synthetic
from partdistill.data.planted import part_appearance


def test_round_trip_and_planted_appearance(tmp_path):
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=4, seed=3)
    meta = catalog.metadata("synthetic_train", root=tmp_path)
    assert meta.thing_classes == list(synthetic.OBJECT_CLASSES)
    assert meta.parts_of == {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8], 3: [9, 10, 11]}
    for split in ("train", "val"):
        records = catalog.load(f"synthetic_{split}", root=tmp_path)
        # as ImageNet, one object per training image, of the classes in turn; one or two in val
        expected = [1, 1, 1, 1] if split == "train" else [1, 2, 1, 2]
        assert [len(r["annotations"]) for r in records] == expected
        if split == "train":
            assert [r["annotations"][0]["category_id"] for r in records] == [0, 1, 2, 3]
        for record in records:
            image = np.asarray(Image.open(record["file_name"]), dtype=np.float32)
            for obj in record["annotations"]:
                object_mask = masks.decode(obj["segmentation"])
                assert [p["category_id"] for p in obj["parts"]] == meta.parts_of[obj["category_id"]]
                union = np.logical_or.reduce([masks.decode(p["segmentation"]) for p in obj["parts"]])
                assert (union & object_mask).sum() / (union | object_mask).sum() > 0.97
                x0, y0, x1, y1 = obj["bbox"]
                assert object_mask[:, int(x0)].any() and not object_mask[:, : int(x0)].any() and x1 > x0 and y1 > y0
                # each image's colours are jittered (gains 1 +- 0.15, an offset): a part still looks most like
                # its own planted colour among its object's parts
                planted = [part_appearance(obj["category_id"], j)[0] for j in range(len(obj["parts"]))]
                for j, part in enumerate(obj["parts"]):
                    mean = image[masks.decode(part["segmentation"])].mean(0)
                    assert np.abs(mean - planted[j]).max() < 60
                    assert int(np.argmin([np.abs(mean - c).sum() for c in planted])) == j


def test_deterministic_for_a_seed(tmp_path):
    for name in ("a", "b"):
        synthetic.synthesize("synthetic", tmp_path / name / "datasets/synthetic", num_images=2, seed=1)
    for split in ("train", "val"):
        assert (tmp_path / f"a/datasets/synthetic/{split}.json").read_bytes() == (
            tmp_path / f"b/datasets/synthetic/{split}.json").read_bytes()


def test_detectron2_registration_is_optional(caplog):
    import importlib.util

    if importlib.util.find_spec("detectron2") is not None:  # pragma: no cover - not installable here
        pytest.skip("detectron2 is installed: this checks the message given without it")
    assert catalog.register_detectron2() is False
    assert "detectron2 is not installed: nothing registered" in caplog.text
