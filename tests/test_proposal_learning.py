"""Stage proposal_learning on the synthetic data: checkpoints, metrics, AR evaluation, resume,
the tiny model overfitting a few images, and the augmentation mapper."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from partdistill import stages
from partdistill.data import synthetic
from partdistill.data import augmentation
from partdistill.models.inputs import to_model_sample
from partdistill.stages import proposal_learning
from partdistill.store import StoreMissing

NO_JITTER = ("stage.augmentation.flip=false", "stage.augmentation.crop_relative=1.0",
             "stage.augmentation.min_scale=1.0", "stage.augmentation.max_scale=1.0")


def run(compose_cfg, run_dir, stage, *overrides):
    return stages.run(compose_cfg("experiment=smoke", f"stage={stage}", f"run_dir={run_dir}", *overrides))[stage]


def grouped(tmp_path, monkeypatch, compose_cfg, num_images):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=num_images, seed=0)
    run_dir = tmp_path / "runs/a"
    run(compose_cfg, run_dir, "object_masks")
    run(compose_cfg, run_dir, "pixel_grouping")
    return run_dir


def losses(run_dir):
    lines = (run_dir / "proposal_learning/metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["total_loss"] for line in lines]


def test_trains_checkpoints_evaluates_and_resumes(tmp_path, monkeypatch, compose_cfg, capsys):
    run_dir = grouped(tmp_path, monkeypatch, compose_cfg, 6)
    result = run(compose_cfg, run_dir, "proposal_learning")
    out = run_dir / "proposal_learning"
    assert (result["start_iter"], result["iterations"]) == (0, 4)
    assert sorted(p.name for p in (out / "checkpoints").glob("model-*.safetensors")) == \
        ["model-0000002.safetensors", "model-0000004.safetensors"]
    assert {"loss_cross_entropy", "loss_mask", "loss_dice", "total_loss"} <= set(result)
    ar = {k: v for k, v in result.items() if k.startswith("eval/synthetic/AR")}
    assert {"eval/synthetic/AR@1", "eval/synthetic/AR@10", "eval/synthetic/AR-nonoverlap@10"} <= set(ar)
    assert all(isinstance(v, float) for v in ar.values())  # plumbing (4 iterations); what it learns: tests/test_demo.py
    assert json.loads((out / "metrics.json").read_text())["eval"]["synthetic/AR@10"] == ar["eval/synthetic/AR@10"]
    assert len(losses(run_dir)) == 4
    out_line = capsys.readouterr().out
    assert "proposal_learning: 6 images, " in out_line and "iterations 0->4" in out_line
    # a second run finds the last checkpoint and trains nothing more
    again = run(compose_cfg, run_dir, "proposal_learning")
    assert (again["start_iter"], again["iterations"]) == (4, 4) and "total_loss" not in again
    assert again["eval/synthetic/AR@10"] == ar["eval/synthetic/AR@10"]
    # stage=evaluate runs the trained proposal model over the suite: the same AR as the stage's own evaluation
    scored = stages.run(compose_cfg("experiment=smoke", "stage=evaluate", f"run_dir={run_dir}",
                                    f"model.weights={out}"))["evaluate"]
    assert scored["AR@10"] == pytest.approx(ar["eval/synthetic/AR@10"])
    assert (run_dir / "eval/synthetic/predictions-val.jsonl").is_file()
    # a larger max_iter continues from there
    more = run(compose_cfg, run_dir, "proposal_learning", "stage.solver.max_iter=6")
    assert (more["start_iter"], more["iterations"]) == (4, 6) and len(losses(run_dir)) == 6


def test_the_tiny_model_overfits_two_images(tmp_path, monkeypatch, compose_cfg):
    run_dir = grouped(tmp_path, monkeypatch, compose_cfg, 2)
    run(compose_cfg, run_dir, "proposal_learning", "stage.solver.base_lr=1e-3", "stage.solver.max_iter=40",
        "stage.solver.steps=[]", "stage.solver.warmup_iters=0", "stage.eval_suites=[]",
        "stage.checkpoint_period=100", *NO_JITTER)
    values = losses(run_dir)
    assert len(values) == 40
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_a_missing_grouping_store_names_the_stage_to_run(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    with pytest.raises(StoreMissing, match="stage=pixel_grouping"):
        run(compose_cfg, tmp_path / "runs/empty", "proposal_learning")


def aug_cfg(**changes):
    base = {"base_size": 64, "flip": True, "crop_relative": 0.9, "min_scale": 0.1, "max_scale": 2.0, "retries": 100}
    return OmegaConf.create(base | changes)


def painted(height=48, width=80):
    """An image whose red channel is a part mask and whose green channel is another (both asymmetric)."""
    part_masks = torch.zeros(2, height, width, dtype=torch.bool)
    part_masks[0, 5:30, 4:30] = True
    part_masks[1, 20:45, 50:76] = True
    image = torch.zeros(3, height, width)
    image[0], image[1] = 255.0 * part_masks[0], 255.0 * part_masks[1]
    return image, part_masks


def test_the_augmentation_is_deterministic_for_a_seed_and_keeps_masks_aligned():
    image, part_masks = painted()
    aug, checked = aug_cfg(), 0
    for seed in range(30):
        a = augmentation.augment(image, part_masks, aug, torch.Generator().manual_seed(seed))
        b = augmentation.augment(image, part_masks, aug, torch.Generator().manual_seed(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] and torch.equal(a[3], b[3])
        out_image, out_masks, (h, w), kept = a
        assert len(kept) == len(out_masks) and set(kept.tolist()) <= {0, 1}
        assert out_image.shape == (3, 64, 64) and out_masks.shape[1:] == (64, 64) and len(out_masks) >= 1
        assert not out_masks[:, h:].any() and not out_masks[:, :, w:].any()
        if min(h, w) < 24:  # at the smallest scales resampling edges dominate
            continue
        checked += 1
        # every kept mask is the painted channel of the input mask it came from, up to resampling edges
        for mask, c in zip(out_masks[:, :h, :w], kept.tolist()):
            painted_c = out_image[c, :h, :w] > 127
            assert (mask & painted_c).sum() / (mask | painted_c).sum() > 0.85
    assert checked >= 5
    seeds = [augmentation.augment(image, part_masks, aug, torch.Generator().manual_seed(s))[0] for s in range(4)]
    assert any(not torch.equal(seeds[0], other) for other in seeds[1:])  # seeds differ


def test_the_flip_mirrors_image_and_masks_together():
    image, part_masks = painted()
    aug = aug_cfg(crop_relative=1.0, min_scale=1.0, max_scale=1.0)
    plain = augmentation.augment(image, part_masks, aug_cfg(flip=False, crop_relative=1.0, min_scale=1.0,
                                                                  max_scale=1.0), torch.Generator().manual_seed(0))
    flipped = 0
    for seed in range(16):
        out_image, out_masks, (h, w), kept = augmentation.augment(image, part_masks, aug, torch.Generator().manual_seed(seed))
        assert (h, w) == plain[2]
        if torch.equal(out_image, plain[0]):
            assert torch.equal(out_masks, plain[1])
        else:
            flipped += 1
            assert torch.equal(out_image[:, :h, :w], plain[0][:, :h, :w].flip(-1))
            assert torch.equal(out_masks[:, :h, :w], plain[1][:, :h, :w].flip(-1))
            assert out_masks[0, :h, :w].sum() == plain[1][0].sum()
    assert 0 < flipped < 16


def test_filters_and_targets_are_class_agnostic():
    from partdistill.data import masks

    def rle(mask):
        return masks.encode(mask)

    full = torch.zeros(10, 10, dtype=torch.bool)
    big, small = full.clone(), full.clone()
    big[:, :9] = True
    small[:, 9] = True
    record = {"file_name": "x.png", "objects": [
        {"object_ratio": 1.0, "parts": [{"segmentation": rle(big.numpy()), "cluster": 0},
                                         {"segmentation": rle(small.numpy()), "cluster": 1}]},
        {"object_ratio": 0.01, "parts": [{"segmentation": rle(big.numpy()), "cluster": 0}]}]}
    items = proposal_learning.training_items([record], min_object_area_ratio=0.05, min_area_ratio=0.15)
    assert len(items) == 1 and len(items[0]["segments"]) == 1  # the small object and the 10% part are dropped
    assert proposal_learning.training_items([record], 1.0, 0.0) == []
    sample = to_model_sample(torch.zeros(3, 8, 8), torch.ones(3, 8, 8, dtype=torch.bool), (6, 8))
    assert sample["class_labels"].tolist() == [0, 0, 0] and sample["pixel_mask"][6:].sum() == 0
