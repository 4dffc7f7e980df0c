"""Stage distillation: the class-conditioned head (slicing, gradient mask, inference), the mapping of
evaluation classes into the training classes, and the stage end to end on a part-ranking store built
from the synthetic ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from partdistill import stages
from partdistill.data import catalog, masks, synthetic
from partdistill.data.catalog import Metadata
from partdistill.data.class_map import training_classes
from partdistill.errors import UserError
from partdistill.models.conditioned_head import (
    conditioned_loss_terms,
    configure_conditioned_loss,
    object_parts,
    slice_logits,
)
from partdistill.store import Store, class_key


def test_slice_logits_takes_each_images_class_and_the_no_object_logit():
    K, C = 2, 3
    logits = torch.arange(2 * 1 * (K * C + 1), dtype=torch.float32).view(2, 1, K * C + 1)
    sliced = slice_logits(logits, torch.tensor([2, 0]), K)
    assert sliced[0, 0].tolist() == [4.0, 5.0, 6.0]  # class 2: outputs 4, 5; no-object 6
    assert sliced[1, 0].tolist() == [7.0, 8.0, 13.0]  # class 0 of the second image: 7, 8; no-object 13


def test_object_parts_conditions_on_the_class_and_merges_queries_of_one_label():
    K = 2
    # 3 queries, 2 classes: query 0 -> class 0 part 1; query 1 -> class 1 part 0; query 2 -> class 0 part 1
    class_logits = torch.full((3, 2 * K + 1), -10.0)
    class_logits[0, 1] = class_logits[1, 2] = class_logits[2, 1] = 10.0
    mask_logits = torch.full((3, 2, 4), -10.0)
    mask_logits[0, :, :2] = 10.0  # query 0 covers the left half
    mask_logits[1, :, :] = 10.0  # query 1 everything
    mask_logits[2, :, 2:] = 10.0  # query 2 the right half
    object_mask = torch.ones(2, 4, dtype=torch.bool)
    object_mask[1, 3] = False
    part_masks, labels, scores = object_parts(class_logits, mask_logits, object_mask, 0, K, top_k=200)
    # conditioned on class 0, queries 0 and 2 both say part 1: one merged segment, the object's pixels
    assert labels.tolist() == [1] and torch.equal(part_masks[0], object_mask) and scores[0] > 0.99
    part_masks, labels, _ = object_parts(class_logits, mask_logits, object_mask, 1, K, top_k=200)
    assert labels.tolist() == [0] and torch.equal(part_masks[0], object_mask)  # class 1: query 1's part 0
    # unconditioned: global labels c * K + k; the three queries are equally sure, their masks decide
    part_masks, labels, _ = object_parts(class_logits, mask_logits, object_mask, None, K, top_k=200)
    assert set(labels.tolist()) <= {1, 2} and part_masks.sum() == object_mask.sum()


def tiny_model(compose_cfg, num_labels):
    from partdistill.models.mask2former import build_model

    cfg = compose_cfg("experiment=smoke")
    torch.manual_seed(0)
    model = build_model(cfg.model, num_labels=num_labels)
    configure_conditioned_loss(model, OmegaConf.create({"class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0,
                                                        "no_object_weight": 0.1, "train_num_points": 256,
                                                        "oversample_ratio": 3.0, "importance_sample_ratio": 0.0}), 2)
    return model


def test_the_loss_only_trains_the_head_rows_of_the_images_class(compose_cfg):
    K, C = 2, 3
    model = tiny_model(compose_cfg, K * C)
    target = torch.zeros(1, 64, 64)
    target[0, 10:40, 10:40] = 1
    batch = {"pixel_values": torch.randn(2, 3, 64, 64), "pixel_mask": torch.ones(2, 64, 64, dtype=torch.int64),
             "mask_labels": [target, target], "class_labels": [torch.tensor([1]), torch.tensor([0])],
             "object_classes": torch.tensor([2, 0])}
    terms = conditioned_loss_terms(K)(model, batch)
    assert {"loss_cross_entropy", "loss_mask", "loss_dice"} <= set(terms)
    sum(terms.values()).backward()
    rows = model.class_predictor.weight.grad.abs().sum(1)
    assert (rows[[0, 1, 4, 5, 6]] > 0).all()  # classes 0 and 2, and no-object
    assert (rows[[2, 3]] == 0).all()  # class 1 is in no image of the batch


def test_evaluation_classes_map_to_training_classes_by_wnid_family_and_counterpart_table():
    pascal = Metadata(["aeroplane", "person", "tvmonitor"])
    assert training_classes(pascal, "pascal_parts_val", "imagenet_1k_train", ["n02690373", "n03782006"]) == [0, None, 1]
    assert training_classes(pascal, "pascal_parts_val", "imagenet_22k_train",
                            ["n00007846", "n02690373", "n02691156"]) == [2, 0, None]  # the general synset first
    part_imagenet = Metadata(["n01440764", "n02690373"], extra={"wnids": ["n01440764", "n02690373"]})
    assert training_classes(part_imagenet, "part_imagenet_val", "imagenet_1k_train", ["n02690373"]) == [None, 0]
    synthetic_meta = Metadata(["disc", "tower"])
    assert training_classes(synthetic_meta, "synthetic_val", "synthetic_train", ["class-1"]) == [None, 0]
    assert training_classes(synthetic_meta, "synthetic_val", "imagenet_1k_train", ["class-1"]) == [None, None]


# ---------------------------------------------------------------------------------------------
# the stage


def ranking_store_from_ground_truth(run_dir, root, num_partitions=1):
    """A part_ranking store whose part labels are the synthetic ground truth's local part index."""
    records = catalog.load("synthetic_train", root)
    meta = catalog.metadata("synthetic_train", root)
    store = Store(run_dir / "store", "part_ranking", num_partitions, {"test": "ground truth"})
    with store.write_shard(0, classes=sorted({class_key(r) for r in records})) as shard:
        for r in records:
            objects = []
            for a in r["annotations"]:
                area = r["height"] * r["width"]
                parts = [{"segmentation": p["segmentation"], "label": meta.parts_of[a["category_id"]].index(p["category_id"]),
                          "score": 1.0, "ratio": float(masks.decode(p["segmentation"]).sum()) / area}
                         for p in a["parts"]]
                objects.append({"segmentation": a["segmentation"], "category_id": a["category_id"],
                                "object_ratio": float(masks.decode(a["segmentation"]).sum()) / area, "parts": parts})
            shard.add({"image_id": r["image_id"], "file_name": r["file_name"], "height": r["height"],
                       "width": r["width"], "class_key": class_key(r), "class_id": None, "objects": objects})
    return store


@pytest.fixture
def ranked(tmp_path, monkeypatch):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=6, seed=0)
    run_dir = tmp_path / "runs/a"
    ranking_store_from_ground_truth(run_dir, tmp_path)
    return run_dir


def run(compose_cfg, run_dir, *overrides):
    return stages.run(compose_cfg("experiment=smoke", "stage=distillation", f"run_dir={run_dir}",
                                  "stage.init_from=null", *overrides))["distillation"]


def test_trains_evaluates_by_part_miou_and_resumes(ranked, compose_cfg, capsys):
    result = run(compose_cfg, ranked)
    out = ranked / "distillation"
    assert (result["start_iter"], result["iterations"]) == (0, 4)
    assert {type(result["eval/synthetic/C-mIoU"]), type(result["eval/synthetic/A-mIoU"])} == {float}  # plumbing (4 iterations); what it learns: tests/test_demo.py
    head = json.loads((out / "head.json").read_text())
    classes = head["classes"]
    assert head["kind"] == "conditioned_parts" and head["num_labels"] == 3 * len(classes) and classes == sorted(classes)
    assert head["train_data"] == "synthetic_train" and head["model"]["name"] == "tiny"
    assert json.loads((out / "metrics.json").read_text())["stage"] == "distillation"
    assert "distillation: " in capsys.readouterr().out
    again = run(compose_cfg, ranked)
    assert (again["start_iter"], again["iterations"]) == (4, 4)


def test_the_tiny_model_overfits_two_images(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=2, seed=0)
    run_dir = tmp_path / "runs/a"
    ranking_store_from_ground_truth(run_dir, tmp_path)
    run(compose_cfg, run_dir, "stage.solver.base_lr=1e-3", "stage.solver.max_iter=40", "stage.solver.steps=[]",
        "stage.solver.warmup_iters=0", "stage.eval_suites=[]", "stage.checkpoint_period=100",
        "stage.augmentation.flip=false", "stage.augmentation.crop_relative=1.0", "stage.augmentation.min_scale=1.0",
        "stage.augmentation.max_scale=1.0")
    lines = (run_dir / "distillation/metrics.jsonl").read_text().splitlines()
    values = [json.loads(line)["total_loss"] for line in lines]
    first, last = np.mean(values[:5]), np.mean(values[-5:])
    assert len(values) == 40 and last < 0.7 * first, (first, last)


def test_labels_beyond_the_part_classes_and_a_missing_proposal_model_are_named(ranked, compose_cfg):
    with pytest.raises(UserError, match="num_part_classes=2"):
        run(compose_cfg, ranked, "stage.num_part_classes=2")
    with pytest.raises(UserError, match="stage=proposal_learning"):
        run(compose_cfg, ranked, f"stage.init_from={ranked}/proposal_learning")


def test_evaluate_runs_the_trained_model_writes_its_predictions_and_rescoring_them_agrees(ranked, compose_cfg):
    run(compose_cfg, ranked)
    weights = ranked / "distillation"
    scored = stages.run(compose_cfg("experiment=smoke", "stage=evaluate", f"run_dir={ranked}",
                                    f"model.weights={weights}"))["evaluate"]
    out = ranked / "eval/synthetic"
    predictions = out / "predictions-val.jsonl"
    segments = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert segments and {"image_id", "segmentation", "label", "score"} <= set(segments[0])
    assert all(0 <= s["label"] < 3 for s in segments)  # conditioned: the K part labels of each object's class
    assert isinstance(scored["C-mIoU"], float)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"] == str(weights) and metrics["mapping"]
    rescored = stages.run(compose_cfg("experiment=smoke", "stage=evaluate", f"run_dir={ranked}",
                                      f"eval.predictions={predictions}"))["evaluate"]
    assert rescored["C-mIoU"] == scored["C-mIoU"] and rescored["A-mIoU"] == scored["A-mIoU"]
    # one checkpoint file works as well, and the evaluation the stage ran at its end agrees
    final = json.loads((weights / "metrics.json").read_text())["eval"]["synthetic/C-mIoU"]
    assert abs(final - scored["C-mIoU"]) < 1e-6
    checkpoint = sorted((weights / "checkpoints").glob("model-*.safetensors"))[-1]
    again = stages.run(compose_cfg("experiment=smoke", "stage=evaluate", f"run_dir={ranked}",
                                   f"stage.weights={checkpoint}"))["evaluate"]
    assert again["C-mIoU"] == scored["C-mIoU"]


def test_evaluate_names_what_is_wrong_with_the_weights(ranked, compose_cfg, tmp_path):
    from partdistill.errors import ConfigError

    def evaluate(*overrides):
        return stages.run(compose_cfg("experiment=smoke", "stage=evaluate", f"run_dir={ranked}", *overrides))
    with pytest.raises(ConfigError, match="model.weights=RUN_DIR"):
        evaluate()
    with pytest.raises(ConfigError, match="no such file"):
        evaluate(f"model.weights={tmp_path}/nowhere")
    with pytest.raises(ConfigError, match="no head.json"):
        evaluate(f"model.weights={tmp_path}")
    run(compose_cfg, ranked)
    with pytest.raises(ConfigError, match="model=tiny"):
        evaluate(f"model.weights={ranked}/distillation", "model=m2f_swin_tiny")


def test_a_stage_starts_from_another_stages_model_all_but_the_class_head(compose_cfg, tmp_path):
    from partdistill.models.weights import load_all_but_head, save_model_weights

    trained = tiny_model(compose_cfg, 6)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)
    save_model_weights(tmp_path / "model-0000010.safetensors", trained)
    fresh = tiny_model(compose_cfg, 3)
    head_before = fresh.class_predictor.weight.clone()
    load_all_but_head(fresh, tmp_path / "model-0000010.safetensors")
    theirs = dict(trained.named_parameters())
    for name, parameter in fresh.named_parameters():
        if name.startswith("class_predictor."):
            continue
        assert torch.equal(parameter, theirs[name]), name
    assert torch.equal(fresh.class_predictor.weight, head_before)
    with pytest.raises(UserError, match="no such file"):
        load_all_but_head(fresh, tmp_path / "nowhere")
    (tmp_path / "untrained").mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        load_all_but_head(fresh, tmp_path / "untrained")


def test_finetune_starts_from_the_distilled_model(ranked, compose_cfg):
    run(compose_cfg, ranked)
    result = stages.run(compose_cfg("experiment=smoke", "stage=finetune", f"run_dir={ranked}",
                                    f"stage.init_from={ranked}/distillation"))["finetune"]
    assert result["iterations"] == 4
    head = json.loads(next((ranked / "finetune").glob("*/head.json")).read_text())
    assert head["init_from"].startswith(str(ranked / "distillation/checkpoints/model-"))
