"""Where a run stands, read from its folder alone: each stage of the method done, partial or not started.

"Done" is read from disk, never from a scheduler: every shard complete for a partitioned stage, a
checkpoint at `max_iter` plus metrics.json for a training stage, metrics.json for an evaluation,
summary.md for the report. So it works the same for a run started locally or on SLURM, and
after SLURM has forgotten the jobs.
"""
from __future__ import annotations

from pathlib import Path

from partdistill.stages import STAGE_ORDER, progress

STATES = ("done", "partial", "not started")


def run_status(run_dir: Path) -> list[dict]:
    """One row per stage of the method, in order: {"stage", "state", "detail", "path"}."""
    return [progress.of_stage(run_dir, stage).row() for stage in STAGE_ORDER]


def format_status(run_dir: Path, rows: list[dict]) -> str:
    """The rows as an aligned table, with a last line counting the stages done."""
    width = max(len(r["stage"]) for r in rows)
    lines = [f"{run_dir}:"]
    lines += [f"  {r['stage']:<{width}}  {r['state']:<11}  {r['detail']}".rstrip() for r in rows]
    done = sum(r["state"] == "done" for r in rows)
    lines.append(f"  {done} of {len(rows)} stages done (read from the run folder; a stage a run does not "
                 "include stays 'not started')")
    return "\n".join(lines)
