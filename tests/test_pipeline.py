"""The whole method as a user tries it on a laptop: `partdistill data synth`, then
`python launch.py experiment=smoke stage=pipeline`, every stage reading the previous one's outputs
from run_dir, ending with the distilled model scored on the synthetic suite."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from partdistill.paths import CHECKOUT


def command(*args: str, root) -> subprocess.CompletedProcess:
    env = {**os.environ, "PART_DISTILLATION_ROOT": str(root), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=CHECKOUT,
                          timeout=900)


@pytest.mark.slow
def test_the_smoke_pipeline_runs_every_stage_from_the_synthetic_data(tmp_path):
    synth = command("-m", "partdistill.cli", "data", "synth", "--out", str(tmp_path), root=tmp_path)
    assert synth.returncode == 0, synth.stderr
    result = command("launch.py", "experiment=smoke", "stage=pipeline", f"hydra.run.dir={tmp_path}/hydra",
                     root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs/smoke_synthetic"
    out = result.stdout
    for stage in ("object_masks", "pixel_grouping", "part_ranking"):
        store = run_dir / "store" / stage
        assert json.loads((store / "store.json").read_text())["stage"] == stage
        assert sorted(p.name for p in store.glob("part-*")) == ["part-0-of-2", "part-1-of-2"], stage
        assert f"{stage}: " in out
    for stage in ("proposal_learning", "distillation"):
        metrics = json.loads((run_dir / stage / "metrics.json").read_text())
        assert metrics["iterations"] == 4 and list((run_dir / stage / "checkpoints").glob("model-*.safetensors"))
    job_dir = run_dir / "eval" / "synthetic"  # the pipeline's evaluation goes to a fixed folder of run_dir
    scored = json.loads((job_dir / "metrics.json").read_text())
    assert scored["weights"] == str(run_dir / "distillation") and isinstance(scored["C-mIoU"], float)
    assert (job_dir / "predictions-val.jsonl").stat().st_size > 0 and list(job_dir.glob("overlays/*.png"))
    assert "evaluate synthetic_val: " in out
    assert (run_dir / "eval" / "summary.md").read_text().count("| synthetic | ok |") == 1
    # a second run skips every stage done under its configuration
    again = command("launch.py", "experiment=smoke", "stage=pipeline", f"hydra.run.dir={tmp_path}/hydra2",
                    root=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done under this configuration") == 6, again.stdout
    # a changed stage runs again; its own identity check then refuses the checkpoints of other values
    changed = command("launch.py", "experiment=smoke", "stage=pipeline", f"hydra.run.dir={tmp_path}/hydra3",
                      "stage.distillation.solver.base_lr=0.5", root=tmp_path)
    assert changed.stdout.count("done under this configuration") == 4, changed.stdout
    assert changed.returncode != 0 and "distillation" in changed.stderr and "base_lr" in changed.stderr
