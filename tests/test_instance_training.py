"""Stage instance_training: an object instance model trained on the synthetic objects, saved with
save_pretrained so that the next stages load it as they load the COCO model (`model.pretrained=`)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from partdistill import stages
from partdistill.data import catalog, synthetic
from partdistill.evaluation.instances import TopInstanceIoUEvaluator
from partdistill.evaluation.samples import Prediction
from partdistill.models.mask2former import build_model
from partdistill.stages.instance_training import training_items


def test_trains_exports_and_the_export_loads_as_a_pretrained_model(tmp_path, monkeypatch, compose_cfg, capsys):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=4, seed=0)
    run_dir = tmp_path / "runs/a"
    export = run_dir / "instance_training/pretrained"
    umask = os.umask(0o022)
    os.umask(umask)
    cfg = compose_cfg("experiment=smoke", "stage=instance_training", f"run_dir={run_dir}", f"model.pretrained={export}")
    result = stages.run(cfg)["instance_training"]
    assert (result["start_iter"], result["iterations"]) == (0, 4)
    assert isinstance(result["eval/synthetic_val/top_instance_IoU"], float)
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]
    # readable by the team like every other output (safetensors would create it 0600)
    assert {p.name: p.stat().st_mode & 0o777 for p in export.iterdir()}["model.safetensors"] == 0o666 & ~umask
    assert f"instance model -> {export}" in capsys.readouterr().out
    # the export is a transformers folder with the class names, loaded by the option that loads COCO's model
    model = build_model(cfg.model).eval()  # model.pretrained = the export
    assert model.config.id2label == {0: "disc", 1: "tower", 2: "kite", 3: "shield"}
    trained = build_model({**cfg.model, "pretrained": None}, num_labels=4).eval()
    from partdistill.models.weights import load_model_weights

    load_model_weights(trained, run_dir / "instance_training")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).class_queries_logits, trained(pixel_values=x).class_queries_logits)
    # a rerun trains nothing more and writes the same export
    again = stages.run(cfg)["instance_training"]
    assert (again["start_iter"], again["iterations"]) == (4, 4)


def test_training_items_are_the_objects_with_their_classes(tmp_path):
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=4, seed=0)
    records = catalog.load("synthetic_val", tmp_path)
    items = training_items(records)
    assert [len(i["segments"]) for i in items] == [len(r["annotations"]) for r in records]
    assert items[1]["labels"] == [a["category_id"] for a in records[1]["annotations"]]


def test_top_instance_iou_takes_the_best_matching_object():
    gt = np.zeros((8, 8), bool)
    gt[:4, :4] = True
    other = np.zeros((8, 8), bool)
    other[4:, 4:] = True
    from partdistill.data import masks

    record = {"annotations": [{"segmentation": masks.encode(gt)}, {"segmentation": masks.encode(other)}]}
    half = np.zeros((8, 8), bool)
    half[4:, 4:6] = True  # half of the second object, scored highest
    evaluator = TopInstanceIoUEvaluator()
    evaluator.process([record, record], [Prediction(np.stack([gt, half]), np.zeros(2, np.int64), np.array([0.1, 0.9])),
                                         Prediction.empty(8, 8)])
    result = evaluator.evaluate()
    assert result["top_instance_IoU"] == pytest.approx(100 * (0.5 + 0.0) / 2)
    assert (result["top_instance_IoU>0.5"], result["images"]) == (0.0, 2)
