"""The dataset root, the layout check before a run, and the error a missing dataset gives."""
from __future__ import annotations

import shutil

import pytest

from partdistill import plan
from partdistill.paths import CHECKOUT, datasets_root, project_root
from partdistill.data.missing import DatasetLayoutError, check


def test_root_defaults_to_the_checkout(monkeypatch):
    monkeypatch.delenv("PART_DISTILLATION_ROOT", raising=False)
    assert project_root() == CHECKOUT and (CHECKOUT / "launch.py").is_file()
    monkeypatch.setenv("PART_DISTILLATION_ROOT", "")
    assert project_root() == CHECKOUT


def test_root_from_the_environment(root):
    assert datasets_root() == root / "datasets"


def test_the_layout_check_passes_and_the_run_folder_is_under_the_root(root, compose_cfg):
    cfg = compose_cfg("data=imagenet_22k", "eval=part_imagenet")
    reports = plan.check_datasets(cfg)
    assert [r.path for r in reports] == [root / "datasets/imagenet_22k"] and not reports[0].missing
    assert cfg.run_dir == str(root / "runs/compute_friendly_imagenet_22k")


def test_the_layout_check_fails_with_what_is_missing_and_how_to_fix_it(empty_root, compose_cfg):
    with pytest.raises(DatasetLayoutError) as info:
        plan.preflight([compose_cfg("data=imagenet_1k")])
    text = str(info.value)
    assert f"$PART_DISTILLATION_ROOT={empty_root}" in text
    assert f"looked at {empty_root}/datasets/imagenet_1k" in text
    assert f"missing: {empty_root}/datasets/ (the dataset root folder does not exist)" in text
    assert 'datasets/README.md, section "ImageNet-1K"' in text and "README.md#imagenet-1k" in text


def test_unset_root_is_named_with_the_default_used(monkeypatch):
    monkeypatch.delenv("PART_DISTILLATION_ROOT", raising=False)
    text = str(DatasetLayoutError([check("cityscapes_part")]))
    assert "$PART_DISTILLATION_ROOT is unset, so the default root was used" in text
    assert str(CHECKOUT) in text and "(the repository checkout)" in text


def test_eval_suite_requires_its_scored_split(root, compose_cfg):
    shutil.rmtree(root / "datasets/part_imagenet/valtest")
    (root / "datasets/part_imagenet/valtest.json").unlink()
    with pytest.raises(DatasetLayoutError) as info:
        plan.preflight([compose_cfg("stage=evaluate", "eval=part_imagenet")])
    assert "create it with `partdistill data prepare part_imagenet`" in str(info.value)
    plan.preflight([compose_cfg("stage=evaluate", "eval=part_imagenet", "eval.split=val")])


@pytest.mark.parametrize(
    "overrides, needed",
    [
        ([], {"imagenet_1k": ["train"]}),
        (["experiment=paper", "stage=pixel_grouping"], {"imagenet_22k": ["train"]}),
        (["stage=evaluate", "eval=part_imagenet"], {"part_imagenet": ["valtest"]}),
        (["stage=finetune", "eval=cityscapes_part"], {"cityscapes_part": ["val"]}),
        (
            ["experiment=paper", "stage=proposal_learning"],
            {"imagenet_22k": ["train"], "pascal_parts": ["val"], "part_imagenet": ["valtest"], "cityscapes_part": ["val"]},
        ),
        (["experiment=smoke", "stage=pipeline"], {"synthetic": ["train", "val"]}),
    ],
)
def test_a_run_needs_only_what_its_stages_read(compose_cfg, overrides, needed):
    assert plan.dataset_needs(compose_cfg(*overrides)) == needed


def test_every_missing_dataset_is_reported_at_once(root, compose_cfg):
    shutil.rmtree(root / "datasets/imagenet_22k")
    shutil.rmtree(root / "datasets/cityscapes_part")
    with pytest.raises(DatasetLayoutError) as info:
        plan.require(plan.check_datasets(compose_cfg("experiment=paper", "stage=distillation")))
    assert [r.dataset for r in info.value.reports] == ["imagenet_22k", "cityscapes_part"]


def test_unknown_eval_suite_is_a_config_error(compose_cfg):
    with pytest.raises(plan.ConfigError, match="unknown suite 'voc'"):
        plan.dataset_needs(compose_cfg("stage=distillation", "stage.eval_suites=[voc]"))


def test_a_run_that_only_trains_does_not_need_the_val_split(root, compose_cfg):
    shutil.rmtree(root / "datasets/imagenet_1k/val")
    plan.preflight([compose_cfg("stage=object_masks", "data=imagenet_1k")])  # reads train only
    with pytest.raises(DatasetLayoutError, match="imagenet_1k/val"):
        plan.require([check("imagenet_1k")])  # `partdistill data check` still reports the whole dataset
