"""Stages object_masks and pixel_grouping on the synthetic data: store, resume, refusal, dCRF, evaluation."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from partdistill import stages
from partdistill.data import masks, part_imagenet
from partdistill.models.dcrf import DenseCRFUnavailable
from partdistill.stages import pixel_grouping
from partdistill.errors import UserError
from partdistill.store import Store, StoreMismatch


def run(compose_cfg, run_dir, stage, *overrides):
    return stages.run(compose_cfg("experiment=smoke", f"stage={stage}", f"run_dir={run_dir}", *overrides))[stage]


def store_files(run_dir, stage):
    folder = run_dir / "store" / stage
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.glob("part-*/*")) if p.name != "manifest.json"}


def test_object_masks_then_pixel_grouping(synth, compose_cfg, capsys):
    run_dir = synth / "runs/a"
    result = run(compose_cfg, run_dir, "object_masks")
    assert (result["images"], result["objects"], result["skipped"]) == (6, 6, 0)
    result = run(compose_cfg, run_dir, "pixel_grouping")
    assert result["objects"] == 6 and result["partitions_written"] == 2
    assert "pixel_grouping: 6 images, 6 objects grouped" in capsys.readouterr().out
    records = list(Store.open(run_dir / "store", "pixel_grouping").records())
    assert len(records) == 6
    for record in records:
        for obj in record["objects"]:
            obj_mask = masks.decode(obj["segmentation"])
            parts = [masks.decode(p["segmentation"]) for p in obj["parts"]]
            assert 1 <= len(parts) <= 4 and obj_mask.shape == (record["height"], record["width"])
            assert (np.sum(parts, axis=0) == obj_mask).all()  # the clusters tile the object
    # a rerun finds every partition complete
    assert run(compose_cfg, run_dir, "pixel_grouping")["partitions_written"] == 0


def test_a_killed_run_resumes_to_the_same_store(synth, compose_cfg, monkeypatch):
    for name in ("whole", "killed"):
        run(compose_cfg, synth / "runs" / name, "object_masks")
    run(compose_cfg, synth / "runs/whole", "pixel_grouping")
    real, calls = pixel_grouping._group_shard, []

    def dies_on_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(pixel_grouping, "_group_shard", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg, synth / "runs/killed", "pixel_grouping")
    store = Store.open(synth / "runs/killed/store", "pixel_grouping")
    assert store.complete() == [0] and store.incomplete() == [1]
    assert not list((synth / "runs/killed/store/pixel_grouping").glob("*.tmp-*"))
    monkeypatch.setattr(pixel_grouping, "_group_shard", real)
    assert run(compose_cfg, synth / "runs/killed", "pixel_grouping")["partitions_written"] == 1
    assert store_files(synth / "runs/killed", "pixel_grouping") == store_files(synth / "runs/whole", "pixel_grouping")


def test_a_store_written_by_another_config_is_refused(synth, compose_cfg):
    run_dir = synth / "runs/a"
    run(compose_cfg, run_dir, "object_masks")
    run(compose_cfg, run_dir, "pixel_grouping", "stage.partition=0")
    with pytest.raises(StoreMismatch, match="identity.kmeans.k: 4 \\(stored\\) vs 3 \\(now\\)"):
        run(compose_cfg, run_dir, "pixel_grouping", "stage.kmeans.k=3")


def test_object_masks_from_the_instance_model(synth, compose_cfg):
    result = run(compose_cfg, synth / "runs/m", "object_masks", "stage.source=model", "stage.partition=1")
    assert result["images"] + result["skipped"] > 0
    for record in Store.open(synth / "runs/m/store", "object_masks").records():
        (obj,) = record["objects"]
        assert masks.decode(obj["segmentation"]).shape == (record["height"], record["width"])
        assert 0 <= obj["score"] <= 1


def test_dense_crf(synth, compose_cfg, monkeypatch):
    run(compose_cfg, synth / "runs/c", "object_masks")
    result = run(compose_cfg, synth / "runs/c", "pixel_grouping", "stage.partition=0", "stage.dcrf.enabled=true")
    assert result["objects"] > 0
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # as if it were not installed
    with pytest.raises(DenseCRFUnavailable, match="pip install 'partdistill\\[crf\\]'"):
        run(compose_cfg, synth / "runs/d", "pixel_grouping", "stage.dcrf.enabled=true")


def test_grouping_evaluation_scores_clusters_as_proposals(synth, compose_cfg):
    part_imagenet.synthesize("part_imagenet", synth / "datasets/part_imagenet", num_images=4, seed=0)
    part_imagenet.prepare_valtest(synth / "datasets/part_imagenet")
    result = run(compose_cfg, synth / "runs/e", "pixel_grouping", "stage.evaluate=true", "eval=part_imagenet")
    assert set(result) >= {"AR@1", "AR@200", "AR-nonoverlap@200"} and isinstance(result["AR@200"], float)
    assert (synth / "runs/e/eval/part_imagenet/metrics.json").is_file()


@pytest.mark.parametrize("reader", ["pixel_grouping", "proposal_learning"])
def test_a_stage_refuses_an_upstream_store_with_incomplete_partitions(synth, compose_cfg, reader):
    """A failed task of an array leaves its stage's store incomplete: the next stage reading it would train on,
    or group, part of the data without a word. It stops instead, naming the partitions and the fix."""
    run_dir = synth / "run"
    upstream = "object_masks" if reader == "pixel_grouping" else "pixel_grouping"
    run(compose_cfg, run_dir, "object_masks", *(["stage.partition=0"] if upstream == "object_masks" else []))
    if upstream == "pixel_grouping":
        run(compose_cfg, run_dir, "pixel_grouping", "stage.partition=1")
    with pytest.raises(UserError) as refused:
        run(compose_cfg, run_dir, reader, "stage.solver.max_iter=1") if reader == "proposal_learning" else \
            run(compose_cfg, run_dir, reader)
    message = str(refused.value)
    missing = "1" if upstream == "object_masks" else "0"
    assert f"{run_dir / 'store' / upstream}" in message and f"incomplete partitions: {missing}" in message
    assert f"stage={upstream}" in message and "stage.partition=incomplete" in message
