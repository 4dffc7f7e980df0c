"""Stage dispatch: the pipeline's order, the partitions, and how a multi-task job shares them out."""
from __future__ import annotations

import pytest

from partdistill import stages
from partdistill.errors import ConfigError


def test_pipeline_runs_the_stages_in_order(compose_cfg):
    cfg = compose_cfg("stage=pipeline")  # the method from COCO's instance model: no instance_training, no report
    assert [name for name, _ in stages.stages_to_run(cfg)] == [s for s in stages.STAGE_ORDER if s not in
                                                            ("instance_training", "report")]
    cfg = compose_cfg("experiment=demo")
    assert [name for name, _ in stages.stages_to_run(cfg)] == list(stages.STAGE_ORDER)
    cfg = compose_cfg("stage=pipeline", "stage.stages=[pixel_grouping,evaluate]")
    assert [name for name, s in stages.stages_to_run(cfg)] == ["pixel_grouping", "evaluate"]


def test_pipeline_rejects_unknown_stages(compose_cfg):
    with pytest.raises(ConfigError, match="unknown stages"):
        stages.stages_to_run(compose_cfg("stage=pipeline", "stage.stages=[grouping]"))


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
