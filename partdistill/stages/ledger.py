"""The ledger of a pipeline's SLURM submissions: `run_dir/ledger.json`, one entry per submission.

Each entry holds the command, the submit time and, per step of the chain (a stage, an evaluation
suite, the summary), its job (array) id, its tasks with their log files, what it waited for and
its resources. The status view reads job ids and logs from here, not from SLURM's memory of old
jobs (the CI cluster's `sacct` stand-in forgets finished jobs after MinJobAge); a resubmission
reads here which steps still have jobs queued or running, so as not to submit them twice.
"""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

from partdistill.errors import UserError
from partdistill.io import write_json_atomic

LEDGER = "ledger.json"
LIVE_STATES = ("PD", "R", "CG", "CF", "RQ", "RS", "RH", "S", "SE")  # squeue's short codes of a job not ended


def path_of(run_dir: Path) -> Path:
    return Path(run_dir) / LEDGER


def read(run_dir: Path) -> list[dict]:
    """The submissions recorded for the run, oldest first ([] without a ledger)."""
    path = path_of(run_dir)
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["submissions"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a ledger partdistill wrote ({exc}); move it away to start the record "
                        "anew") from None


def append(run_dir: Path, submission: dict) -> None:
    """Adds one submission (written atomically: a reader sees the old ledger or the new one)."""
    write_json_atomic(path_of(run_dir), {"submissions": [*read(run_dir), submission]}, indent=1)


def latest_steps(run_dir: Path) -> dict[str, dict]:
    """Step label -> the step of the newest submission that submitted it (with its `command` and `time`)."""
    steps: dict[str, dict] = {}
    for submission in read(run_dir):
        for step in submission["steps"]:
            if not step["tasks"]:  # still queued from an earlier submission: that entry says which jobs
                continue
            steps[step["label"]] = {**step, "command": submission["command"], "time": submission["time"]}
    return steps


def task_ids(step: dict) -> list[str]:
    return [task["job_id"] for task in step["tasks"]]


def queue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Job (task) id -> (squeue's state code, reason) of those of `job_ids` SLURM still queues or runs.
    Empty when SLURM cannot be asked (no squeue here): the status then reads the folder only."""
    if not job_ids:
        return {}
    masters = sorted({job.split("_")[0] for job in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(masters), "-o", "%i|%t|%r"], capture_output=True,
                             text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    wanted, found = set(job_ids), {}
    for line in out.stdout.splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3 and parts[1] in LIVE_STATES and parts[0] in wanted:
            found[parts[0]] = (parts[1], parts[2])
    return found


def live(run_dir: Path) -> dict[str, list[str]]:
    """Step label -> its task ids that SLURM still queues or runs (steps with none left out)."""
    steps = latest_steps(run_dir)
    states = queue([job for step in steps.values() for job in task_ids(step)])
    out = {label: [job for job in task_ids(step) if job in states] for label, step in steps.items()}
    return {label: jobs for label, jobs in out.items() if jobs}


def task_outcome(task: dict) -> str:
    """What a task that left the queue left on disk: "ok", "failed" (an error result, or a log without a
    result: killed, out of memory, cancelled while running) or "never started" (no log at all)."""
    result = Path(task["result"])
    if result.is_file():
        try:
            with open(result, "rb") as f:
                kind = pickle.load(f)[0]
        except Exception:  # a result this process cannot unpickle: the job did end with one
            return "failed"
        return "ok" if kind == "success" else "failed"
    return "failed" if Path(task["stdout"]).is_file() else "never started"
