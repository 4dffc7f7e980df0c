"""A stage that ends with nothing fails, naming why and the likely fix, unless stage.allow_empty=true;
judged over the whole stage, so an empty partition of an array does not fail its task."""
from __future__ import annotations

import pytest

from partdistill.data import imagenet
from partdistill.errors import UserError
from partdistill.store import Store
from test_stage_grouping import run


def test_ground_truth_objects_of_imagenet_are_an_error_that_names_the_fix(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    imagenet.synthesize("imagenet_1k", tmp_path / "datasets/imagenet_1k", num_images=4, seed=0)
    with pytest.raises(UserError, match="give stage.source=model") as info:
        run(compose_cfg, tmp_path / "run", "object_masks", "data=imagenet_1k")
    assert "holds no record (5 sample(s) skipped)" in str(info.value) and "stage.allow_empty=true" in str(info.value)
    # the user's explicit choice keeps the empty store
    result = run(compose_cfg, tmp_path / "run", "object_masks", "data=imagenet_1k", "stage.allow_empty=true")
    assert result["images"] == 0


def test_more_clusters_than_pixels_is_an_error(synth, compose_cfg):
    run(compose_cfg, synth / "run", "object_masks")
    with pytest.raises(UserError, match=r"stage.kmeans.k=100000\): lower stage.kmeans.k"):
        run(compose_cfg, synth / "run", "pixel_grouping", "stage.kmeans.k=100000")


def test_an_empty_partition_of_a_whole_store_is_fine(synth, compose_cfg):
    # 6 images of 2 classes x 3 in turn... more partitions than classes leaves some partitions empty
    run(compose_cfg, synth / "run", "object_masks", "stage.num_partitions=8", "stage.partition=7")
    run(compose_cfg, synth / "run", "object_masks", "stage.num_partitions=8")
    store = Store.open(synth / "run" / "store", "object_masks")
    counts = [store.manifest(i)["counts"]["records"] for i in range(8)]
    assert 0 in counts and sum(counts) > 0
