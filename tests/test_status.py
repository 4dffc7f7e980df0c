"""`partdistill status RUN_DIR`: each stage done, partial or not started, read from the run folder alone."""
from __future__ import annotations

import json

from partdistill import cli
from test_stage_grouping import run


def states(capsys, run_dir) -> dict:
    capsys.readouterr()  # what the stages printed
    assert cli.main(["status", str(run_dir), "--json"]) == 0
    return {row["stage"]: (row["state"], row["detail"]) for row in json.loads(capsys.readouterr().out)}


def test_status_follows_a_run_stage_by_stage(synth, compose_cfg, capsys):
    run_dir = synth / "run"
    run_dir.mkdir()
    assert {state for state, _ in states(capsys, run_dir).values()} == {"not started"}
    run(compose_cfg, run_dir, "object_masks")
    run(compose_cfg, run_dir, "pixel_grouping", "stage.partition=1")
    found = states(capsys, run_dir)
    assert found["object_masks"][0] == "done" and found["object_masks"][1].startswith("2/2 shards complete")
    assert found["pixel_grouping"] == ("partial", found["pixel_grouping"][1])
    assert "1/2 shards complete" in found["pixel_grouping"][1] and "incomplete: 0" in found["pixel_grouping"][1]
    assert found["proposal_learning"][0] == "not started"
    run(compose_cfg, run_dir, "pixel_grouping")
    run(compose_cfg, run_dir, "proposal_learning", "stage.solver.max_iter=2", "stage.checkpoint_period=1")
    found = states(capsys, run_dir)
    assert found["pixel_grouping"][0] == "done"
    assert found["proposal_learning"][0] == "done" and "iteration 2 of 2" in found["proposal_learning"][1]
    # a longer schedule: the same checkpoints are now short of max_iter, so the stage is partial
    (run_dir / "proposal_learning/checkpoints/identity.json").write_text(json.dumps(
        {**json.loads((run_dir / "proposal_learning/checkpoints/identity.json").read_text()), "max_iter": 4}))
    found = states(capsys, run_dir)
    assert found["proposal_learning"][0] == "partial" and "iteration 2 of 4" in found["proposal_learning"][1]
    capsys.readouterr()
    assert cli.main(["status", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert "object_masks" in table and "2 of 8 stages done" in table


def test_status_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["status", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
