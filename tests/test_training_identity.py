"""A training stage resumes only the training it was asked for: what it trains (stage options, model,
seed, data) is recorded beside its checkpoints, and another configuration is refused with the keys
that differ and the two ways out, unless a key cannot change the result."""
from __future__ import annotations

import logging

import pytest

from partdistill import stages
from partdistill.data import synthetic
from partdistill.errors import UserError

STAGE = "instance_training"  # the training stage that needs no upstream stage: the fastest to run


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=4, seed=0)
    return tmp_path / "runs/a"


def train(compose_cfg, run_dir, *overrides) -> dict:
    cfg = compose_cfg("experiment=smoke", f"stage={STAGE}", f"run_dir={run_dir}", *overrides)
    return stages.run(cfg)[STAGE]


def iterations(result: dict) -> tuple[int, int]:
    return result["start_iter"], result["iterations"]


def checkpoint_files(run_dir) -> dict[str, bytes]:
    folder = run_dir / STAGE / "checkpoints"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(("model-", "state-"))}


def test_resume_under_a_changed_lr_is_refused_and_restart_starts_over(run_dir, compose_cfg):
    assert iterations(train(compose_cfg, run_dir)) == (0, 4)
    before = checkpoint_files(run_dir)
    with pytest.raises(UserError) as refused:
        train(compose_cfg, run_dir, "stage.solver.base_lr=2e-4")
    message = str(refused.value)
    assert f"{run_dir / STAGE / 'checkpoints'}" in message
    assert "stage.solver.base_lr: 0.0001 (stored) vs 0.0002 (now)" in message
    assert "run_dir=" in message and "stage.resume=restart" in message
    assert checkpoint_files(run_dir) == before  # refused before anything was written
    # restart trains the new configuration from scratch in place, and a rerun of it then resumes
    assert iterations(train(compose_cfg, run_dir, "stage.solver.base_lr=2e-4", "stage.resume=restart")) == (0, 4)
    assert checkpoint_files(run_dir).keys() == before.keys() and checkpoint_files(run_dir) != before
    assert iterations(train(compose_cfg, run_dir, "stage.solver.base_lr=2e-4", "stage.resume=restart")) == (4, 4)
    with pytest.raises(UserError, match="stage.solver.base_lr: 0.0002 .stored. vs 0.0001 .now."):
        train(compose_cfg, run_dir)


def test_keys_that_cannot_change_the_result_do_not_count_and_max_iter_only_extends(run_dir, compose_cfg):
    assert iterations(train(compose_cfg, run_dir)) == (0, 4)
    same = ("stage.eval_period=2", "stage.checkpoint_period=1", "stage.keep_checkpoints=5",
            "stage.resources.gpus_per_node=1", "stage.eval_suites=[synthetic]")
    assert iterations(train(compose_cfg, run_dir, *same)) == (4, 4)
    # the schedule's steps are explicit, so a longer max_iter continues the same run
    assert iterations(train(compose_cfg, run_dir, "stage.solver.max_iter=6")) == (4, 6)
    with pytest.raises(UserError) as shorter:  # the folder holds 6 iterations: not a 4-iteration run
        train(compose_cfg, run_dir)
    assert "stage.solver.max_iter=4" in str(shorter.value) and "iteration 6" in str(shorter.value)
    with pytest.raises(UserError, match=r"stage.solver.steps: \[3\] \(stored\) vs \[5\] \(now\)"):
        train(compose_cfg, run_dir, "stage.solver.max_iter=6", "stage.solver.steps=[5]")


def test_a_run_from_before_identities_resumes_with_one_warning(run_dir, compose_cfg, caplog):
    assert iterations(train(compose_cfg, run_dir)) == (0, 4)
    recorded = run_dir / STAGE / "checkpoints" / "identity.json"
    assert recorded.is_file()
    recorded.unlink()  # as a run made before training identities were recorded
    with caplog.at_level(logging.WARNING):
        assert iterations(train(compose_cfg, run_dir, "stage.solver.base_lr=2e-4")) == (4, 4)
    warnings = [r.getMessage() for r in caplog.records if "identity" in r.getMessage()]
    assert len(warnings) == 1 and str(recorded.parent) in warnings[0]
    assert recorded.is_file()  # from now on it is checked
    with pytest.raises(UserError, match="stage.solver.base_lr"):
        train(compose_cfg, run_dir)
