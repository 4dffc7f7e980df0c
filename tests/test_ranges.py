"""Values no run can use stop before any model is built or job submitted, naming key, value and range."""
from __future__ import annotations

import pytest
import torch

from partdistill import plan
from partdistill.config import ranges
from partdistill.errors import ConfigError
from test_launch import launch


@pytest.mark.parametrize("experiment", ["paper", "compute_friendly", "smoke", "demo"])
@pytest.mark.parametrize("stage", ["pipeline", "finetune"])
def test_every_preset_is_within_range(compose_cfg, experiment, stage):
    assert ranges.problems(compose_cfg(f"experiment={experiment}", f"stage={stage}")) == []


@pytest.mark.parametrize(
    "stage, override, message",
    [
        ("proposal_learning", "stage.solver.max_iter=0", "stage.solver.max_iter=0: must be at least 1"),
        ("proposal_learning", "stage.solver.max_iter=-1", "stage.solver.max_iter=-1: must be at least 1"),
        ("pixel_grouping", "stage.num_partitions=0", "stage.num_partitions=0: must be at least 1"),
        ("pixel_grouping", "stage.kmeans.k=0", "stage.kmeans.k=0: must be at least 1 (clusters per object)"),
        ("pixel_grouping", "stage.image_size=0", "stage.image_size=0: must be at least 32"),
        ("object_masks", "stage.batch_size=0", "stage.batch_size=0: must be at least 1"),
        ("distillation", "stage.solver.ims_per_batch=0", "stage.solver.ims_per_batch=0: must be at least 1"),
        ("distillation", "stage.checkpoint_period=0", "stage.checkpoint_period=0: must be at least 1"),
        ("distillation", "stage.solver.base_lr=-0.1", "stage.solver.base_lr=-0.1: must be greater than 0"),
        ("finetune", "stage.fraction=1.5", "stage.fraction=1.5: must be in (0, 1]"),
        ("object_masks", "seed=-1", "seed=-1: must be at least 0"),
        ("object_masks", "device=bogus", "device=bogus: choose auto, cpu, cuda or cuda:N"),
        ("object_masks", "run_dir=", "run_dir='': give the folder"),
        ("pipeline", "stage.part_ranking.num_clusters=0", "stage.part_ranking.num_clusters=0: must be at least 1"),
    ],
)
def test_impossible_values_are_refused_before_anything_runs(root, compose_cfg, stage, override, message):
    cfg = compose_cfg("experiment=smoke", f"stage={stage}", override)
    with pytest.raises(ConfigError) as info:
        plan.preflight([cfg])
    assert message in str(info.value)
    assert not (root / "runs").exists()


def test_every_problem_is_named_at_once(compose_cfg):
    found = ranges.problems(compose_cfg("experiment=smoke", "stage=pixel_grouping", "stage.kmeans.k=0",
                                        "stage.batch_size=0"))
    assert len(found) == 2


def test_the_command_line_refuses_with_a_message_not_a_traceback(root):
    result = launch("experiment=smoke", "stage=proposal_learning", "stage.solver.max_iter=0", root=root)
    assert result.returncode == 2, result.stderr
    assert "stage.solver.max_iter=0: must be at least 1" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "runs" / "smoke_synthetic" / "proposal_learning").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_when_the_run_starts(root):
    result = launch("experiment=smoke", "stage=object_masks", "device=cuda", root=root)
    assert result.returncode == 2, result.stderr
    assert "device=cuda, but this machine has no CUDA device" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "runs" / "smoke_synthetic" / "store").exists()
