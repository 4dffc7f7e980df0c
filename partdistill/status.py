"""Where a run stands, read from its folder alone: each stage of the method done, partial or not started.

"Done" is read from disk, never from a scheduler: every shard complete for a partitioned stage, a
checkpoint at `max_iter` plus metrics.json for a training stage, metrics.json for an evaluation,
summary.md for the report. So it works the same for a run started locally or on SLURM, and
after SLURM has forgotten the jobs.
"""
from __future__ import annotations

from pathlib import Path

from partdistill.engine.identity import recorded_max_iter
from partdistill.models.weights import list_checkpoints
from partdistill.stages import PARTITIONED, STAGE_ORDER
from partdistill.store import Store

TRAINING = ("instance_training", "proposal_learning", "distillation")
STATES = ("done", "partial", "not started")


def _row(stage: str, state: str, detail: str, path: Path) -> dict:
    return {"stage": stage, "state": state, "detail": detail, "path": str(path)}


def _partitioned(run_dir: Path, stage: str) -> dict:
    folder = run_dir / "store" / stage
    if not (folder / "store.json").is_file():
        return _row(stage, "not started", "", folder)
    store = Store.open(folder.parent, stage)
    summary = store.summary()
    done, total = len(summary["complete"]), summary["num_partitions"]
    missing = summary["incomplete"]
    detail = f"{done}/{total} shards complete, {summary['records']} records, {summary['skipped']} skipped"
    if missing:
        shown = ",".join(map(str, missing[:10])) + (",..." if len(missing) > 10 else "")
        detail += f"; incomplete: {shown}"
    return _row(stage, "done" if not missing else "partial", detail, folder)


def _training(run_dir: Path, stage: str) -> dict:
    folder = run_dir / stage
    checkpoints = list_checkpoints(folder / "checkpoints")
    if not checkpoints and not (folder / "metrics.json").is_file():
        return _row(stage, "not started", "", folder)
    max_iter = recorded_max_iter(folder / "checkpoints")
    newest = checkpoints[0].iteration if checkpoints else None
    detail = f"iteration {newest if newest is not None else '-'} of {max_iter if max_iter is not None else '?'}"
    if checkpoints:
        detail += f", last checkpoint {checkpoints[0].state_path.name}"
    finished = (folder / "metrics.json").is_file() and (max_iter is None or (newest or 0) >= max_iter)
    return _row(stage, "done" if finished else "partial", detail, folder)


def _results(folder: Path, stage: str, marker: str) -> dict:
    found = sorted(p.parent.name for p in folder.glob(f"*/{marker}"))
    if not found:
        return _row(stage, "not started", "", folder)
    return _row(stage, "done", f"{', '.join(found)}", folder)


def run_status(run_dir: Path) -> list[dict]:
    """One row per stage of the method, in order: {"stage", "state", "detail", "path"}."""
    rows = []
    for stage in STAGE_ORDER:
        if stage in PARTITIONED:
            rows.append(_partitioned(run_dir, stage))
        elif stage in TRAINING:
            rows.append(_training(run_dir, stage))
        elif stage == "evaluate":
            rows.append(_results(run_dir / "eval", stage, "metrics.json"))
        else:  # the report
            done = (run_dir / "report" / "summary.md").is_file()
            rows.append(_row(stage, "done" if done else "not started", "summary.md" if done else "",
                             run_dir / "report"))
    return rows


def format_status(run_dir: Path, rows: list[dict]) -> str:
    """The rows as an aligned table, with a last line counting the stages done."""
    width = max(len(r["stage"]) for r in rows)
    lines = [f"{run_dir}:"]
    lines += [f"  {r['stage']:<{width}}  {r['state']:<11}  {r['detail']}".rstrip() for r in rows]
    done = sum(r["state"] == "done" for r in rows)
    lines.append(f"  {done} of {len(rows)} stages done (read from the run folder; a stage a run does not "
                 "include stays 'not started')")
    return "\n".join(lines)
