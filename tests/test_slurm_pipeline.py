"""The smoke pipeline submitted to the real local SLURM with one command, as a chain of dependent jobs.

One run serves every check: the first submission meets a fault in partition 1 of pixel grouping (a
stray file where its shard goes), so that task fails, SLURM cancels every job after it and
`partdistill status` names the failed task, its log and the resume command; that command, once
the fault is gone, submits only the failed partition and the stages after it, which run in
dependency order (job arrays for partitioned stages, one job per training stage) to the summary
table; then the same command submits nothing.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import test_slurm as base

from partdistill.paths import CHECKOUT

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(base.REASON is not None, reason=base.REASON or "")]

PIPELINE = ["experiment=smoke", "stage=pipeline"]
AFTER_GROUPING = ["proposal_learning", "part_ranking", "distillation", "evaluate-synthetic"]


@pytest.fixture
def synth(tmp_path) -> Path:
    """A dataset root as `partdistill data synth` writes it (the smoke pipeline's data)."""
    from partdistill.cli import main as cli

    assert cli(["data", "synth", "--out", str(tmp_path)]) == 0
    return tmp_path


def submit(cmd: list[str], root: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=base.env_for(root), cwd=CHECKOUT, timeout=240)
    base.SUBMITTED.extend(entry["job_id"] for entry in last_steps(root) if entry.get("job_id"))
    return result


def ledger(root: Path) -> list[dict]:
    path = root / "runs" / "smoke_synthetic" / "ledger.json"
    return json.loads(path.read_text())["submissions"] if path.is_file() else []


def last_steps(root: Path) -> list[dict]:
    found = ledger(root)
    return found[-1]["steps"] if found else []


def wait_for_chain(steps: list[dict], timeout: float) -> None:
    ids = [entry["job_id"] for entry in steps if entry.get("job_id")]
    base.wait_until(lambda: not _queued(ids), timeout, f"the pipeline's jobs {ids} to leave the queue", poll=1.0)


def _queued(ids: list[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=False).stdout
    return [job for job in ids if any(q == job or q.startswith(f"{job}_") for q in out.split())]


def status(root: Path) -> tuple[dict, str]:
    run = root / "runs" / "smoke_synthetic"
    cli = [sys.executable, "-m", "partdistill.cli", "status", str(run)]
    rows = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True, env=base.env_for(root),
                                     check=True).stdout)
    text = subprocess.run(cli, capture_output=True, text=True, env=base.env_for(root), check=True).stdout
    return {row["stage"]: row for row in rows}, text


def times(job: str) -> tuple[str, str]:
    state = base.job_state(job)
    return state.get("StartTime", ""), state.get("EndTime", "")


def test_the_pipeline_as_dependent_jobs_fails_resumes_and_then_has_nothing_to_submit(synth):
    run = synth / "runs" / "smoke_synthetic"
    grouping = run / "store" / "pixel_grouping"
    grouping.mkdir(parents=True)
    (grouping / "part-1-of-2").write_text("in the way\n")  # the fault: task 1 cannot rename its shard into place
    cmd = base.command(*PIPELINE)

    first = submit(cmd, synth)
    assert first.returncode == 0, first.stdout + first.stderr
    steps = {entry["label"]: entry for entry in last_steps(synth)}
    assert list(steps) == ["object_masks", "pixel_grouping", *AFTER_GROUPING, "summary"]
    for label, entry in steps.items():  # one line per step: its job (array) id, what it runs, its resources
        assert f"  {label} " in first.stdout and entry["job_id"] in first.stdout, first.stdout
    assert steps["object_masks"]["array"] and [t["what"] for t in steps["object_masks"]["tasks"]] == [
        "partition 0", "partition 1"]
    assert not steps["proposal_learning"]["array"] and len(steps["proposal_learning"]["tasks"]) == 1
    assert steps["pixel_grouping"]["after"] == [steps["object_masks"]["job_id"]]
    assert steps["summary"]["after_kind"] == "afterany"
    # submitted again while its jobs are queued: nothing is submitted twice
    twice = submit(cmd, synth)
    assert twice.returncode == 0 and "nothing to submit" in twice.stdout and "still queued or running" in twice.stdout
    assert len(ledger(synth)) == 1
    wait_for_chain(last_steps(synth), timeout=300)

    rows, text = status(synth)
    assert rows["object_masks"]["state"] == "done"
    failed = rows["pixel_grouping"]
    assert failed["state"] == "failed", text
    assert [f["job_id"] for f in failed["failed"]] == [f"{steps['pixel_grouping']['job_id']}_1"]
    log = Path(failed["failed"][0]["errors"])
    assert log.is_file() and "NotADirectoryError" in log.read_text()
    for label in ("proposal_learning", "part_ranking", "distillation", "evaluate"):
        assert rows[label]["state"] == "cancelled", text  # SLURM ended them: their dependency failed
    assert not (run / "proposal_learning").exists()
    assert "The run cannot progress" in text and shlex.join(["python", *cmd[1:]]) in text

    # the fault removed, the command the status gives resubmits only what is unfinished
    (grouping / "part-1-of-2").unlink()
    again = submit(cmd, synth)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "object_masks: done under this configuration" in again.stdout
    steps = {entry["label"]: entry for entry in last_steps(synth)}
    assert list(steps) == ["pixel_grouping", *AFTER_GROUPING, "summary"]
    assert [t["what"] for t in steps["pixel_grouping"]["tasks"]] == ["partition 1"] and steps["pixel_grouping"]["array"]
    wait_for_chain(last_steps(synth), timeout=420)

    rows, text = status(synth)
    assert all(rows[s]["state"] == "done" for s in ("object_masks", "pixel_grouping", "proposal_learning",
                                                     "part_ranking", "distillation", "evaluate", "summary")), text
    assert "cannot progress" not in text
    # in dependency order: each step started after the one before it ended
    order = ["pixel_grouping", *AFTER_GROUPING, "summary"]
    spans = {label: times(steps[label]["job_id"] + ("_1" if label == "pixel_grouping" else "")) for label in order}
    for before, after in zip(order, order[1:]):
        assert spans[before][1] <= spans[after][0], (before, after, spans)
    summary = (run / "eval" / "summary.md").read_text()
    assert "| synthetic | ok |" in summary

    count = len(ledger(synth))
    done = submit(cmd, synth)
    assert done.returncode == 0 and "nothing to submit" in done.stdout and "every stage is done" in done.stdout
    assert len(ledger(synth)) == count
    assert not _queued([e["job_id"] for s in ledger(synth) for e in s["steps"] if e.get("job_id")])


def test_a_submission_failing_part_way_cancels_what_it_submitted_and_exits_2(synth, tmp_path):
    # an sbatch that SLURM's own --test-only check passes, but that refuses the third real submission
    # (as a cluster may: a job limit reached meanwhile, a controller restart)
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    shim = tmp_path / "bin"
    shim.mkdir()
    count = tmp_path / "count"
    (shim / "sbatch").write_text(f"""#!/bin/bash
case " $* " in *" --test-only "*) exec {real} "$@";; esac
n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}
if [ $n -ge 3 ]; then echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" >&2; exit 1; fi
exec {real} "$@"
""")
    (shim / "sbatch").chmod(0o755)
    env = {**base.env_for(synth), "PATH": f"{shim}:{base.env_for(synth)['PATH']}"}
    result = subprocess.run(base.command(*PIPELINE), capture_output=True, text=True, env=env, cwd=CHECKOUT,
                            timeout=240)
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Job violates accounting/QOS policy" in err and "Traceback" not in err
    cancelled = re.search(r"cancelled the jobs already submitted for this pipeline: (\d+) (\d+)", err)
    assert cancelled, err
    base.SUBMITTED.extend(cancelled.groups())
    for job in cancelled.groups():
        state = base.wait_until(lambda: base.job_state(job).get("JobState") in ("CANCELLED", "COMPLETED", "FAILED")
                                and base.job_state(job)["JobState"], 30, f"job {job} to end")
        assert state == "CANCELLED", job
    assert ledger(synth) == []  # nothing recorded: the run has no chain
