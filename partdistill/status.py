"""Where a run stands: each stage of the method done, running, pending, failed, partial or not started.

"Done" is read from disk, never from a scheduler (stages/progress.py): every shard complete for a
partitioned stage, a checkpoint at `max_iter` plus metrics.json for a training stage, metrics.json
for an evaluation, summary.md for the report. A stage not done whose jobs the pipeline's ledger
(stages/ledger.py) records is what SLURM says of them while they are queued (pending, running) and,
once they have left the queue, what they left on disk: a failed task (its job id and log file), a
job SLURM cancelled because a job it waited for failed. A run that cannot progress says the one
command that resumes it. Without a ledger (a run started locally) the folder is all there is.
"""
from __future__ import annotations

from pathlib import Path

from partdistill.stages import PARTITIONED, STAGE_ORDER, ledger, progress

STATES = ("done", "running", "pending", "failed", "cancelled", "partial", "not started")


def _steps_of(stage: str, steps: dict[str, dict]) -> list[dict]:
    labels = [label for label in steps if label == stage or (stage == "evaluate" and label.startswith("evaluate-"))]
    return [steps[label] for label in labels]


def _from_slurm(row: dict, stage: str, steps: list[dict], queued: dict[str, tuple[str, str]],
                incomplete: list[int] | None) -> dict:
    tasks = [task for step in steps for task in step["tasks"]]
    ids = ", ".join(sorted({step["job_id"] for step in steps}))
    live = [queued[t["job_id"]] for t in tasks if t["job_id"] in queued]
    if live:
        running = sum(state in ("R", "CG") for state, _ in live)
        reasons = sorted({reason for state, reason in live if state == "PD"})
        row["state"] = "running" if running else "pending"
        row["detail"] = (f"job {ids}: {running} running, {len(live) - running} pending"
                         + (f" ({', '.join(reasons)})" if reasons else "") + (f"; {row['detail']}" if row["detail"] else ""))
        return row
    failed, cancelled = [], []
    for task in tasks:
        if incomplete is not None and task["what"].startswith("partition "):
            if int(task["what"].split()[1]) not in incomplete:
                continue  # its shard is complete, whatever the job did after
        outcome = ledger.task_outcome(task)
        if outcome == "never started":
            cancelled.append(task)
        elif outcome == "failed":
            failed.append(task)  # (a job that ended well with its stage not done leaves the stage partial)
    if failed:
        row["state"] = "failed"
        row["failed"] = [{"job_id": t["job_id"], "what": t["what"], "log": t["stdout"], "errors": t["stderr"]}
                         for t in failed]
        shown = "; ".join(f"{t['job_id']}{' (' + t['what'] + ')' if t['what'] else ''} log {t['stderr']}"
                          for t in failed)
        row["detail"] = f"job {ids} failed: {shown}" + (f"; {row['detail']}" if row["detail"] else "")
    elif cancelled:
        row["state"] = "cancelled"
        row["detail"] = (f"job {ids} never ran: SLURM cancelled it when a job it waited for failed"
                         + (f"; {row['detail']}" if row["detail"] else ""))
    row["command"] = steps[-1]["command"]
    return row


def run_status(run_dir: Path) -> list[dict]:
    """One row per stage of the method, in order ({"stage", "state", "detail", "path"}; with SLURM jobs
    also "jobs" and, for a failed stage, "failed" (task, log) and "command"), plus the pipeline's summary job."""
    steps = ledger.latest_steps(run_dir)
    queued = ledger.queue([task["job_id"] for step in steps.values() for task in step["tasks"]])
    rows = []
    for stage in STAGE_ORDER:
        mine = _steps_of(stage, steps)
        suites = [step["label"].split("-", 1)[1] for step in mine] if stage == "evaluate" and mine else None
        found = progress.of_stage(run_dir, stage, suites=suites)
        row = found.row()
        if mine:
            row["jobs"] = sorted({step["job_id"] for step in mine})
            if found.state != "done":
                shards = found.incomplete if stage in PARTITIONED and found.state != "not started" else None
                row = _from_slurm(row, stage, mine, queued, shards)
        rows.append(row)
    if "summary" in steps:
        done = (run_dir / "eval" / "summary.md").is_file()
        row = {"stage": "summary", "state": "done" if done else "not started", "detail": "eval/summary.md" if done
               else "", "path": str(run_dir / "eval"), "jobs": [steps["summary"]["job_id"]]}
        rows.append(row if done else _from_slurm(row, "summary", [steps["summary"]], queued, None))
    return rows


def resume_command(rows: list[dict]) -> str | None:
    """The command that resumes a run that cannot progress (a stage failed or cancelled, nothing queued)."""
    if any(r["state"] in ("running", "pending") for r in rows):
        return None
    stuck = [r for r in rows if r["state"] in ("failed", "cancelled")]
    return stuck[0]["command"] if stuck else None


def format_status(run_dir: Path, rows: list[dict]) -> str:
    """The rows as an aligned table, a line counting the stages done, and the resume command if one is needed."""
    width = max(len(r["stage"]) for r in rows)
    lines = [f"{run_dir}:"]
    for r in rows:
        jobs = [job for job in r.get("jobs", []) if job not in r["detail"]]
        detail = r["detail"] + (f" [SLURM job {', '.join(jobs)}]" if jobs else "")
        lines.append(f"  {r['stage']:<{width}}  {r['state']:<11}  {detail}".rstrip())
    done = sum(r["state"] == "done" for r in rows)
    lines.append(f"  {done} of {len(rows)} stages done (read from the run folder; a stage a run does not "
                 "include stays 'not started')")
    command = resume_command(rows)
    if command:
        lines.append("  The run cannot progress. Complete outputs are kept; after fixing the cause, resume it "
                     f"(only what is unfinished is submitted):\n    {command}")
    return "\n".join(lines)
