"""Every group option and preset composes; presets carry the paper's values; typos fail at composition."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from partdistill.config import CONFIG_DIR
from partdistill.stages import STAGES

GROUPS = ("data", "eval", "model", "stage", "experiment", "hydra/launcher")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}", hydra=True)
    assert cfg.hydra.runtime.choices[group] == option
    # every value is typed and present; only the dataset paths wait for their resolver
    OmegaConf.to_container(cfg.stage, resolve=True, throw_on_missing=True)
    OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("experiment", options("experiment"))
@pytest.mark.parametrize("setting_stage", ["pipeline", "finetune"])
def test_every_experiment_composes_every_stage(compose_cfg, experiment, setting_stage):
    cfg = compose_cfg(f"experiment={experiment}", f"stage={setting_stage}")
    OmegaConf.to_container(cfg.stage, resolve=True, throw_on_missing=True)


def test_groups_listed_are_the_documented_ones():
    assert options("data") == ["demo", "imagenet_1k", "imagenet_22k", "synthetic"]
    assert options("eval") == ["cityscapes_part", "demo", "part_imagenet", "pascal_parts", "synthetic"]
    assert options("experiment") == ["compute_friendly", "demo", "paper", "smoke"]
    assert options("hydra/launcher") == ["local", "slurm"]
    assert set(options("stage")) == set(STAGES) | {"pipeline"}
    for experiment in options("experiment"):  # every experiment has values for every stage
        values = OmegaConf.load(CONFIG_DIR / "experiment" / f"{experiment}.yaml").stages
        assert set(values) == set(STAGES) | {"pipeline"}, experiment


def test_data_chooses_only_the_data(compose_cfg):
    default = OmegaConf.to_container(compose_cfg(), resolve=False)
    chosen = OmegaConf.to_container(compose_cfg("data=imagenet_22k"), resolve=False)
    assert chosen["data"]["name"] == "imagenet_22k" and default["data"]["name"] == "imagenet_1k"
    assert {k for k in default if default[k] != chosen[k]} == {"data"}


def test_paper_preset(compose_cfg):
    cfg = compose_cfg("experiment=paper", "stage=pipeline", hydra=True)
    assert cfg.data.name == "imagenet_22k" and cfg.model.name == "m2f_swin_large"
    assert cfg.model.pretrained == "facebook/mask2former-swin-large-coco-instance"
    grouping = cfg.stage.pixel_grouping
    assert grouping.kmeans.k == 4 and list(grouping.feature_keys) == ["res3", "res4"]
    assert grouping.metric.name == "dot" and grouping.normalize is False and grouping.num_partitions == 320
    assert (grouping.resources.gpus_per_node, grouping.resources.tasks_per_node) == (1, 1)  # a partition per process
    ranking = cfg.stage.part_ranking
    assert (ranking.num_clusters, ranking.num_partitions, ranking.min_score_1, ranking.min_area_ratio_1) == (8, 400, 0.3, 0.05)
    assert (ranking.min_score_2, ranking.min_area_ratio_2, ranking.classifier_metric.name) == (0.1, 0.05, "l2")
    assert ranking.feature_norm is True
    proposals = cfg.stage.proposal_learning
    assert (proposals.solver.ims_per_batch, proposals.solver.max_iter, list(proposals.solver.steps)) == (512, 50000, [40000, 45000])
    assert proposals.solver.base_lr == 1e-4 and proposals.solver.clip_grad_norm == 0.01
    assert (proposals.resources.nodes, proposals.resources.gpus_per_node) == (8, 8)
    assert (proposals.loss.class_weight, proposals.loss.mask_weight, proposals.loss.dice_weight) == (2.0, 5.0, 5.0)
    distill = cfg.stage.distillation
    assert (distill.solver.ims_per_batch, distill.solver.max_iter, list(distill.solver.steps)) == (256, 120000, [100000, 110000])
    assert distill.num_part_classes == 8 and distill.min_object_area_ratio == 0.05
    assert list(distill.freeze) == ["model.pixel_level_module.encoder", "model.pixel_level_module.decoder.encoder"]


def test_compute_friendly_preset(compose_cfg):
    cfg = compose_cfg("experiment=compute_friendly", "stage=pipeline")
    assert cfg.data.name == "imagenet_1k"
    ranking = cfg.stage.part_ranking
    assert (ranking.min_score_1, ranking.min_area_ratio_1, ranking.classifier_metric.name, ranking.feature_norm) == (0.7, 0.0, "dot", False)
    proposals = cfg.stage.proposal_learning.solver
    assert (proposals.ims_per_batch, proposals.base_lr, proposals.max_iter, list(proposals.steps)) == (64, 1e-5, 90000, [75000, 85000])
    # the 1K config's swapped point-sampling ratios would fail detectron2's own assertion: keep valid ones
    assert cfg.stage.proposal_learning.loss.oversample_ratio >= 1
    assert 0 <= cfg.stage.proposal_learning.loss.importance_sample_ratio <= 1
    distill = cfg.stage.distillation
    assert (distill.solver.ims_per_batch, distill.min_area_ratio, distill.query_feature_normalize) == (32, 0.001, True)


def test_smoke_preset_is_cpu_and_synthetic(compose_cfg):
    cfg = compose_cfg("experiment=smoke", "stage=pipeline")
    assert (cfg.data.name, cfg.eval.suite, cfg.model.name, cfg.device) == ("synthetic", "synthetic", "tiny", "cpu")
    assert cfg.model.pretrained is None
    for name in cfg.stage.stages:
        assert cfg.stage[name].resources.gpus_per_node == 0 and cfg.stage[name].resources.tasks_per_node == 1


def test_demo_preset_is_the_whole_method_on_its_own_data(compose_cfg):
    cfg = compose_cfg("experiment=demo")
    assert cfg.stage.name == "pipeline" and cfg.stage.stages[0] == "instance_training"
    assert cfg.stage.stages[-2:] == ["evaluate", "report"]
    assert (cfg.data.name, cfg.eval.dataset, cfg.eval.suite) == ("synthetic-s0-n64", "synthetic-s0-n64", "demo")
    # every stage after the instance model loads it as it would load the COCO model
    assert cfg.model.pretrained == cfg.stage.instance_training.export == f"{cfg.run_dir}/instance_training/pretrained"
    assert cfg.stage.object_masks.source.value == "model"
    assert cfg.stage.part_ranking.num_clusters == cfg.stage.distillation.num_part_classes
    assert cfg.model.num_queries > 10  # AR@100 can differ from AR@10
    # a seed has its own data and its own run folder, and the stage group can still be chosen
    other = compose_cfg("experiment=demo", "seed=2", "stage=pixel_grouping")
    assert (other.data.name, other.stage.name) == ("synthetic-s2-n64", "pixel_grouping")
    assert other.run_dir != cfg.run_dir and other.run_dir.endswith("runs/demo_s2")


def test_stage_values_follow_the_experiment_and_overrides(compose_cfg):
    assert compose_cfg("stage=pixel_grouping").stage.num_partitions == 8
    assert compose_cfg("stage=pixel_grouping", "experiment=paper").stage.num_partitions == 320
    cfg = compose_cfg("stage=pixel_grouping", "experiment=paper", "stage.kmeans.k=5", "stage.partition=3")
    assert (cfg.stage.kmeans.k, cfg.stage.partition, cfg.stage.num_partitions) == (5, 3, 320)
    cfg = compose_cfg("stage=pipeline", "stage.pixel_grouping.metric=l2")
    assert cfg.stage.pixel_grouping.metric.name == "l2"


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage.kmeans.k=four", "Value 'four' of type 'str' could not be converted to Integer"),
        ("stage.kmeans.kk=3", "Key 'kk' not in 'KMeansConfig'"),
        ("stage.metric=cosine", "Invalid value 'cosine', expected one of [dot, l2]"),
        ("eval.mapping=best", "Invalid value 'best'"),
        ("dry_runn=true", "Key 'dry_runn' not in 'Config'"),
    ],
)
def test_typos_fail_at_composition(compose_cfg, override, message):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg("stage=pixel_grouping", override)
    text = f"{info.value} {info.value.__cause__}"
    assert message in text


def test_unknown_option_fails_with_the_options(compose_cfg):
    with pytest.raises(MissingConfigException, match="Could not find 'data/imagenet_2k'"):
        compose_cfg("data=imagenet_2k")


def test_slurm_launcher_asks_for_the_stage_resources(compose_cfg):
    cfg = compose_cfg("experiment=paper", "stage=distillation", "hydra/launcher=slurm", hydra=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (8, 8, 8)
    assert (launcher.cpus_per_task, launcher.mem_per_gpu, launcher.timeout_min) == (10, "60G", 4320)
    assert launcher.max_num_timeout > 0
    cfg = compose_cfg("experiment=smoke", "stage=pixel_grouping", "hydra/launcher=slurm", hydra=True)
    assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.tasks_per_node) == (0, 1)


def test_the_command_line_wins_over_the_experiment_leaf_by_leaf(compose_cfg):
    # smoke sets kmeans {k: 4, iters: 10}; a dict override merges as Hydra merges it
    cfg = compose_cfg("experiment=smoke", "stage=pixel_grouping", "stage.kmeans={k:2}")
    assert (cfg.stage.kmeans.k, cfg.stage.kmeans.iters) == (2, 10)
    # a value equal to the schema default still wins over the experiment's
    assert compose_cfg("experiment=paper", "stage=pixel_grouping", "stage.num_partitions=1").stage.num_partitions == 1
    assert "stages" not in compose_cfg("experiment=smoke")


def test_an_experiment_value_that_does_not_fit_its_stage_is_named(compose_cfg):
    from partdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stages.pixel_grouping.kmeans.kk=3 \(experiment=smoke\)"):
        compose_cfg("experiment=smoke", "stage=pixel_grouping", "+stages.pixel_grouping.kmeans.kk=3")


@pytest.mark.parametrize("key", ["data.root=/x", "eval.root=/x", "eval.batch_size=4", "eval.min_size=512",
                                 "setting=paper"])
def test_keys_that_nothing_read_are_gone(compose_cfg, key):
    with pytest.raises((ConfigCompositionException, MissingConfigException)):
        compose_cfg(key)


def test_no_code_branches_on_the_experiment_name():
    import subprocess

    found = subprocess.run(["grep", "-rnE", r"(setting|experiment)(\.get\(.name.\)|\.name) *(==|!=|in )",
                            str(CONFIG_DIR.parent / "partdistill")], capture_output=True, text=True).stdout
    assert found == ""
