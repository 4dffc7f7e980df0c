"""Stage finetune: the few-shot subsets, the semseg/prop targets, semantic inference, and training on the
synthetic data end to end (checkpoints, head.json, supervised mIoU, resume, the prop head, overfitting)."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from partdistill import stages
from partdistill.data import masks, synthetic
from partdistill.stages.inference import semantic
from partdistill.models.inputs import Batch
from partdistill.errors import ConfigError
from partdistill.stages import finetune

NO_JITTER = ("stage.augmentation.flip=false", "stage.augmentation.crop_relative=1.0",
             "stage.augmentation.min_scale=1.0", "stage.augmentation.max_scale=1.0")


def ids(records):
    return [r["image_id"] for r in records]


# ---------------------------------------------------------------------------------------------
# the few-shot subset


def test_subsets_are_stable_nested_and_seeded():
    records = [{"image_id": f"2008_{i:06d}", "file_name": f"/x/{i}.jpg"} for i in range(200)]
    shuffled = random.Random(0).sample(records, len(records))
    base = finetune.few_shot_subset(records, 0.1, 1234)
    assert len(base) == 20 and ids(base) == sorted(ids(base))
    assert ids(finetune.few_shot_subset(records, 0.1, 1234)) == ids(base)
    assert ids(finetune.few_shot_subset(shuffled, 0.1, 1234)) == ids(base)  # load order does not matter
    fractions = (0.005, 0.01, 0.05, 0.1, 0.29, 0.5, 1.0)
    subsets = [set(ids(finetune.few_shot_subset(shuffled, f, 1234))) for f in fractions]
    assert [len(s) for s in subsets] == [1, 2, 10, 20, 58, 100, 200]  # floor(N f), float-safe (0.29)
    assert all(a <= b for a, b in zip(subsets, subsets[1:]))  # nested
    assert subsets[-1] == set(ids(records))
    assert set(ids(finetune.few_shot_subset(records, 0.1, 7))) != set(ids(base))  # seeds differ
    # integer ids sort numerically; a tiny fraction still keeps one image
    numbered = [{"image_id": i, "file_name": f"{i}.png"} for i in range(5)]
    assert len(finetune.few_shot_subset(numbered, 1e-6, 0)) == 1
    assert finetune.few_shot_subset([], 0.5, 0) == []
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"stage.fraction=.*must be in \(0, 1\]"):
            finetune.few_shot_subset(records, bad, 1234)


def test_the_output_folder_names_suite_head_fraction_and_seed():
    assert finetune.output_name("pascal_parts", "semseg", 0.1, 1234) == "pascal_parts_semseg_f0.1_s1234"
    assert finetune.output_name("synthetic", "prop", 1.0, 3) == "synthetic_prop_f1_s3"


# ---------------------------------------------------------------------------------------------
# targets


def box(y0, y1, x0, x1, shape=(10, 12)):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def part(category_id, mask):
    return {"category_id": category_id, "segmentation": masks.encode(mask)}


def two_objects_record():
    """Two objects that both have part class 4 ("leg"); the first also has part class 1."""
    return {"file_name": "a.png", "image_id": 1, "height": 10, "width": 12, "annotations": [
        {"category_id": 0, "segmentation": masks.encode(box(0, 10, 0, 6)),
         "parts": [part(4, box(6, 10, 0, 3)), part(1, box(0, 4, 0, 6))]},
        {"category_id": 0, "segmentation": masks.encode(box(0, 10, 6, 12)),
         "parts": [part(4, box(6, 10, 8, 11))]}]}


def test_semseg_targets_are_one_union_mask_per_part_class():
    record = two_objects_record()
    item = finetune.semseg_item(record)
    assert item["labels"] == [1, 4] and len(item["segments"]) == 2
    leg = masks.decode(item["segments"][1])
    assert np.array_equal(leg, box(6, 10, 0, 3) | box(6, 10, 8, 11))
    assert np.array_equal(masks.decode(item["segments"][0]), box(0, 4, 0, 6))


def test_prop_targets_are_every_part_instance_and_partless_images_are_skipped():
    record = two_objects_record()
    item = finetune.prop_item(record)
    assert item["labels"] == [0, 0, 0] and len(item["segments"]) == 3
    no_parts = {"file_name": "b.png", "image_id": 2, "annotations": [
        {"category_id": 0, "segmentation": masks.encode(box(0, 5, 0, 5)), "parts": []}]}
    for head in ("semseg", "prop"):
        items, skipped = finetune.training_items([no_parts, record], head)
        assert len(items) == 1 and skipped == [0]


# ---------------------------------------------------------------------------------------------
# semantic inference


def test_semantic_inference_gives_the_per_pixel_class_at_the_original_size():
    # two images padded to 32 x 32; image 0 fills 32 x 16 (orig 64 x 32), image 1 fills 16 x 32 (orig 16 x 32)
    batch = Batch(torch.zeros(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.int64),
                  image_sizes=[(32, 16), (16, 32)], original_sizes=[(64, 32), (16, 32)])
    # 3 queries, 3 classes + no-object; mask logits at 1/4 of the padded input: 8 x 8
    cls = torch.full((2, 3, 4), -10.0)
    cls[:, 0, 2] = 10.0  # query 0 -> class 2
    cls[:, 1, 0] = 10.0  # query 1 -> class 0
    cls[:, 2, 3] = 10.0  # query 2 -> no-object (must not count, though its mask covers everything)
    logits = torch.full((2, 3, 8, 8), -10.0)
    logits[:, 2] = 10.0
    logits[0, 0, :, :2] = 10.0  # image 0: left half of its valid 4 columns -> query 0
    logits[0, 1, :, 2:4] = 10.0  # right half -> query 1
    logits[0, 0, :, 4:] = 10.0  # the padding says query 0 too: it must be cropped away
    logits[1, 1, :2] = 10.0  # image 1: top half of its valid 4 rows -> query 1
    logits[1, 0, 2:] = 10.0  # bottom half (and the padding rows) -> query 0
    outputs = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=logits)
    first, second = semantic()(outputs, batch, [{}, {}])
    assert first.masks.shape == (2, 64, 32) and first.labels.tolist() == [0, 2]
    assert first.scores.tolist() == [1.0, 1.0] and first.masks.dtype == bool
    label_map = first.label_map()
    assert (label_map[:, :14] == 2).all() and (label_map[:, 18:] == 0).all()
    assert (first.masks.sum(0) == 1).all()  # every pixel exactly one class
    assert second.masks.shape == (2, 16, 32) and second.labels.tolist() == [0, 2]
    label_map = second.label_map()
    assert (label_map[:7] == 0).all() and (label_map[9:] == 2).all()


# ---------------------------------------------------------------------------------------------
# the stage on synthetic data


def run(compose_cfg, run_dir, *overrides):
    return stages.run(compose_cfg("experiment=smoke", "stage=finetune", f"run_dir={run_dir}", *overrides))["finetune"]


def synthesized(tmp_path, monkeypatch, num_images):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=num_images, seed=0)
    return tmp_path / "runs/a"


def test_trains_evaluates_resumes_and_keeps_runs_apart(tmp_path, monkeypatch, compose_cfg, capsys):
    run_dir = synthesized(tmp_path, monkeypatch, 6)
    result = run(compose_cfg, run_dir, "stage.fraction=0.5")
    out = run_dir / "finetune/synthetic_semseg_f0.5_s1234"
    assert (result["start_iter"], result["iterations"]) == (0, 4)
    assert (result["images"], result["images_with_parts"], result["images_without_parts"]) == (3, 6, 0)
    assert sorted(p.name for p in (out / "checkpoints").glob("model-*.safetensors")) == \
        ["model-0000002.safetensors", "model-0000004.safetensors"]
    head = json.loads((out / "head.json").read_text())
    assert head["kind"] == "semantic" and head["num_labels"] == 12 and len(head["part_classes"]) == 12
    assert head["part_classes"][0] == "disc top" and head["dataset"] == "synthetic"
    assert (head["fraction"], head["subset_seed"], head["train_images"]) == (0.5, 1234, 3)
    assert head["model"]["name"] == "tiny"
    miou = result["eval/synthetic/mIoU"]
    assert isinstance(miou, float) and isinstance(result["eval/synthetic/mACC"], float)  # plumbing (4 iterations)
    assert json.loads((out / "metrics.json").read_text())["eval"]["synthetic/mIoU"] == miou
    full = json.loads((out / "eval_results.json").read_text())
    assert full["iteration"] == 4 and len(full["synthetic"]["per_part"]) == 12
    assert "finetune/synthetic_semseg_f0.5_s1234: 3 images, 6 images_with_parts" in capsys.readouterr().out
    # a rerun finds the last checkpoint and trains nothing more
    again = run(compose_cfg, run_dir, "stage.fraction=0.5")
    assert (again["start_iter"], again["iterations"]) == (4, 4) and "total_loss" not in again
    assert again["eval/synthetic/mIoU"] == miou
    # the prop head trains in its own folder, from scratch, scored by proposal AR
    prop = run(compose_cfg, run_dir, "stage.head=prop", "stage.fraction=0.5", "stage.solver.max_iter=2",
               "stage.eval_period=0")
    prop_out = run_dir / "finetune/synthetic_prop_f0.5_s1234"
    assert (prop["start_iter"], prop["iterations"]) == (0, 2)
    assert json.loads((prop_out / "head.json").read_text())["kind"] == "proposals"
    assert isinstance(prop["eval/synthetic/AR@10"], float)
    assert (prop["images"], prop["masks"]) == (3, result["masks"])  # the same subset; its objects differ in class
    assert "eval/synthetic/mIoU" not in prop


def test_an_invalid_fraction_fails_before_training(tmp_path, monkeypatch, compose_cfg):
    run_dir = synthesized(tmp_path, monkeypatch, 2)
    with pytest.raises(ConfigError, match=r"stage.fraction=1.5"):
        run(compose_cfg, run_dir, "stage.fraction=1.5")
    assert not (run_dir / "finetune").exists()


def test_the_tiny_model_overfits_two_images(tmp_path, monkeypatch, compose_cfg):
    run_dir = synthesized(tmp_path, monkeypatch, 2)
    run(compose_cfg, run_dir, "stage.solver.base_lr=1e-3", "stage.solver.max_iter=40", "stage.solver.steps=[]",
        "stage.solver.warmup_iters=0", "stage.eval_period=0", "stage.checkpoint_period=100", *NO_JITTER)
    lines = (run_dir / "finetune/synthetic_semseg_f1_s1234/metrics.jsonl").read_text().splitlines()
    values = [json.loads(line)["total_loss"] for line in lines]
    assert len(values) == 40
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < 0.7 * first, (first, last)
