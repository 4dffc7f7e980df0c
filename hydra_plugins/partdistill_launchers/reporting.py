"""What the SLURM launcher tells the submitting user: what was submitted, and how the sweep ended."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig


def announce(jobs: Sequence[Any], sweep_dir: Path, folder: Path) -> None:
    """Prints the job (array) id, where the logs go, how to watch and cancel."""
    first = jobs[0]
    if len(jobs) > 1:
        array_id = first.job_id.split("_")[0]
        what = f"SLURM job array {array_id} ({len(jobs)} tasks: {jobs[0].job_id} .. {jobs[-1].job_id})"
    else:
        array_id = first.job_id
        what = f"SLURM job {array_id}"
    lines = [
        f"partdistill: submitted {what}; outputs in {sweep_dir}/<job number>",
        f"  logs:   {folder} (%j = job id), e.g. {first.paths.stdout} and {first.paths.stderr.name}",
        f"  watch:  squeue -j {array_id}    tail -f {first.paths.stdout}",
        f"  cancel: scancel {array_id}      (this command waits for the jobs; Ctrl-C stops waiting, "
        "the jobs keep running)",
    ]
    print("\n".join(lines), flush=True)

def collect(jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]], configs: list[DictConfig],
            initial_job_idx: int, sweep_dir: Path) -> list[JobReturn]:
    """Waits for the jobs; their results, or one report of every job that failed or died without one
    (job id, state, logs; for a partitioned stage the command that resubmits only what is incomplete), exit 1."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from partdistill.stages import PARTITIONED

    results: list[JobReturn] = []
    problems: list[str] = []
    try:
        for num, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx):
            what = f"job {job.job_id} (#{num}: {' '.join(filter_overrides(overrides)) or 'no overrides'})"
            logs = f"log: {job.paths.stdout} (errors: {job.paths.stderr})"
            try:
                ret = job.results()[0]
            except UncompletedJobError:  # no result file: cancelled, killed, out of memory, node failure
                state = job.watcher.get_state(job.job_id, mode="force")
                problems.append(f"{what} ended without a result (SLURM state {state}); {logs}")
                continue
            except FailedJobError as exc:  # submitit's own failure: unpickling, too many requeues...
                last = [line for line in str(exc).strip().splitlines() if line.strip()]
                problems.append(f"{what} failed in submitit: {last[-1] if last else 'no message'}; {logs}")
                continue
            if ret.status == JobStatus.FAILED:
                error = ret._return_value
                problems.append(f"{what} failed: {type(error).__name__}: {error}; {logs}")
            results.append(ret)
    except KeyboardInterrupt:
        array_id = jobs[0].job_id.split("_")[0]
        print(f"\npartdistill: stopped waiting; the jobs keep running (squeue -j {array_id}; "
              f"scancel {array_id} to cancel them)", file=sys.stderr)
        sys.exit(130)
    if problems:
        lines = [f"partdistill: {len(problems)} of {len(jobs)} SLURM job(s) of this sweep did not complete:"]
        lines += [f"  {p}" for p in problems]
        if any(cfg.stage.name in PARTITIONED for cfg in configs):
            lines.append("Complete shards are kept. After fixing the cause, resubmit only the incomplete "
                         "partitions:")
            lines.append(f"  {resubmit_command(sys.argv)}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        if all(cfg.stage.name == "evaluate" for cfg in configs):  # the table lists the failed jobs too
            from partdistill.evaluation.summary import write_summary

            print(write_summary(sweep_dir), flush=True)
        sys.exit(1)
    return results


def resubmit_command(argv: Sequence[str]) -> str:
    """The launching command with `stage.partition=...` replaced by `stage.partition=incomplete`."""
    args = [a for a in argv[1:] if not a.startswith("stage.partition=") and not a.startswith("hydra.sweep.dir=")]
    if not any(a in ("-m", "--multirun") for a in args):
        args.insert(0, "-m")
    script = argv[0] if argv else "launch.py"
    return shlex.join(["python", script, *args, "stage.partition=incomplete"])
