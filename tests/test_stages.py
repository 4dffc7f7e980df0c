"""Stage dispatch: the pipeline's order, and a clear stop for a stage that is not there."""
from __future__ import annotations

import pytest

from partdistill import plan, stages


def test_pipeline_runs_the_stages_in_order(compose_cfg):
    cfg = compose_cfg("stage=pipeline")  # the method from COCO's instance model: no instance_training, no report
    assert [name for name, _ in plan.stages_to_run(cfg)] == [s for s in plan.STAGE_ORDER if s not in
                                                            ("instance_training", "report")]
    cfg = compose_cfg("experiment=demo")
    assert [name for name, _ in plan.stages_to_run(cfg)] == list(plan.STAGE_ORDER)
    cfg = compose_cfg("stage=pipeline", "stage.stages=[pixel_grouping,evaluate]")
    assert [name for name, s in plan.stages_to_run(cfg)] == ["pixel_grouping", "evaluate"]


def test_pipeline_rejects_unknown_stages(compose_cfg):
    with pytest.raises(plan.ConfigError, match="unknown stages"):
        plan.stages_to_run(compose_cfg("stage=pipeline", "stage.stages=[grouping]"))


def test_a_missing_stage_module_is_a_plain_error():
    with pytest.raises(stages.StageNotAvailable, match="stage 'no_such_stage' is not implemented in this version"):
        stages.stage_module("no_such_stage")


def test_pipeline_checks_every_stage_before_running_the_first(compose_cfg, monkeypatch):
    ran = []
    monkeypatch.setattr(stages, "available_stages", lambda: ["pixel_grouping"])
    monkeypatch.setattr(stages, "stage_module", lambda name: type(
        "Stage", (), {"run": staticmethod(lambda cfg: ran.append(cfg.stage.name))}))
    with pytest.raises(stages.StageNotAvailable, match="stage 'part_ranking', 'distillation' are not implemented"):
        stages.run(compose_cfg("stage=pipeline", "stage.stages=[pixel_grouping,part_ranking,distillation]"))
    assert ran == []
    stages.run(compose_cfg("stage=pipeline", "stage.stages=[pixel_grouping]"))
    assert ran == ["pixel_grouping"]  # each stage sees its own config as cfg.stage


def test_a_partition_out_of_range_is_refused_before_anything_runs(compose_cfg, root):
    from partdistill import plan

    with pytest.raises(plan.ConfigError, match="stage.partition=7 is outside 0..1"):
        plan.preflight([compose_cfg("experiment=smoke", "stage=pixel_grouping", "stage.partition=7")])
    assert not (root / "runs").exists()


def test_the_ranks_of_a_multi_task_job_share_the_partitions_out(monkeypatch):
    from omegaconf import OmegaConf

    from partdistill.stages.common import partitions_to_run

    stage = OmegaConf.create({"num_partitions": 7, "partition": None})
    assert partitions_to_run(stage) == list(range(7))  # a single process: all of them
    seen = []
    for rank in range(3):
        for key, value in {"RANK": rank, "WORLD_SIZE": 3, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500}.items():
            monkeypatch.setenv(key, str(value))
        seen.append(partitions_to_run(stage))
    assert seen == [[0, 3, 6], [1, 4], [2, 5]]
    stage.partition = 4
    assert partitions_to_run(stage) == []  # rank 2 of 3: the one partition is rank 0's
