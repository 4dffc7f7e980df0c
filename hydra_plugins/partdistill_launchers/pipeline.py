"""`stage=pipeline` on `hydra/launcher=slurm`: the chain of partdistill.chain submitted as SLURM jobs.

Every step gets its own executor, with the launcher's settings resolved against the step's own
stage (`stage.resources`, the job name), and waits for every earlier step (`--dependency=afterok`;
on an array, on the whole array). Each waiting job is submitted with `--kill-on-invalid-dep=yes`:
when a job fails, SLURM cancels the jobs that wait for it (and theirs) instead of leaving them
pending for ever (clusters end such jobs only with `SchedulerParameters=kill_invalid_depend`). The
summary job waits for the evaluations with `afterany`, so it runs whatever they did.

All or nothing: every step's request is put to `sbatch --test-only` before the first is submitted,
and if a submission still fails, the jobs already submitted for this chain are cancelled and the
command exits 2 with SLURM's message. The chain, its job ids and log files go into the run's ledger
(partdistill/stages/ledger.py); the command returns once everything is submitted.
"""
from __future__ import annotations

import copy
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from omegaconf import DictConfig, open_dict

from hydra_plugins.partdistill_launchers.submission import (
    SubmissionError,
    _refusal,
    make_executor,
    sbatch_test_only,
    settings_for,
    snapshot_folder,
    take_snapshot,
)

# the summary job: one CPU, no GPU, an hour at most
SUMMARY_RESOURCES = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 60}


def step_params(launcher_params: dict[str, Any], cfg: DictConfig, summary: bool) -> dict[str, Any]:
    """The launcher's settings resolved against this step's config (its stage's resources and name)."""
    params = settings_for(cfg, launcher_params)
    if summary:
        params.update(SUMMARY_RESOURCES, name="pd_summary")
    return params


def _resources(params: dict[str, Any]) -> str:
    gpus = params.get("gpus_per_node") or 0
    return (f"{params.get('nodes', 1)} node(s) x {params.get('tasks_per_node', 1)} task(s), {gpus} GPU(s)/node, "
            f"{params.get('cpus_per_task')} CPU(s)/task, {params.get('timeout_min')} min")


def submit(launcher: Any, cfg: DictConfig, first_num: int) -> None:
    """Submits the chain of one pipeline config (see the module's docstring); prints one line per step."""
    from submitit.core.utils import FailedJobError

    from partdistill import chain
    from partdistill.paths import project_root
    from partdistill.stages import ledger

    run_dir = Path(str(cfg.run_dir))
    steps, skipped = chain.plan(cfg, ledger.live(run_dir))
    for line in skipped:
        print(f"partdistill: {line}: not submitted", flush=True)
    if not any(step.submit for step in steps):
        waiting = [f"{s.label} ({', '.join(s.live)})" for s in steps]
        print(f"partdistill: nothing to submit for {run_dir}: " + (
            f"still queued or running: {'; '.join(waiting)}" if waiting else "every stage is done"), flush=True)
        return

    sweep_dir = Path(str(cfg.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    snapshot = snapshot_folder(sweep_dir) if launcher.params.get("snapshot", True) else None
    executors = {}
    for step in steps:  # every request checked before the first submission
        if step.submit:
            params = step_params(launcher.params, step.configs[0], step.label == chain.SUMMARY)
            executor = make_executor(params, snapshot, project_root())
            sbatch_test_only(executor, len(step.configs) if step.array else 1)
            executors[step.label] = (executor, params)
    if snapshot is not None:
        take_snapshot(snapshot)

    stage_job = copy.copy(launcher)  # what each stage's task runs: the launcher's job, failing on the stage's error
    stage_job.fail_on_error = True
    submitted: list[str] = []  # job (array) ids of this chain, cancelled if a later submission fails
    ids: dict[str, list[str]] = {}  # step label -> ids its dependents wait for
    entries, num, params = [], first_num, {}
    try:
        for step in steps:
            earlier = [job for label, jobs in ids.items() for job in jobs]
            if not step.submit:
                ids[step.label] = sorted({job.split("_")[0] for job in step.live})
                entries.append({"label": step.label, "stage": step.stage, "reused": True, "tasks": []})
                continue
            executor, params = executors[step.label]
            extra = dict(executor._executor.parameters.get("additional_parameters") or {})
            if earlier:
                kind = "afterany" if step.after_any else "afterok"
                executor.update_parameters(slurm_dependency=f"{kind}:{':'.join(earlier)}")
                if not step.after_any:
                    extra["kill-on-invalid-dep"] = "yes"
            executor.update_parameters(slurm_additional_parameters=extra)
            if step.label == chain.SUMMARY:
                jobs = [executor.submit(chain.finish, step.configs[0])]
            else:
                calls = []
                for task_cfg in step.configs:
                    with open_dict(task_cfg):
                        task_cfg.hydra.job.num = num
                    calls.append((list(cfg.hydra.overrides.task), "hydra.sweep.dir", num, f"job_id_for_{num}",
                                  Singleton.get_state(), task_cfg))
                    num += 1
                jobs = executor.map_array(stage_job, *zip(*calls)) if step.array else \
                    [executor.submit(stage_job, *calls[0])]
            master = jobs[0].job_id.split("_")[0]
            submitted.append(master)
            ids[step.label] = [master]
            entries.append({
                "label": step.label, "stage": step.stage, "job_id": master, "array": step.array,
                "after": earlier, "after_kind": "afterany" if step.after_any else "afterok",
                "resources": _resources(params),
                "tasks": [{"job_id": job.job_id, "what": what, "stdout": str(job.paths.stdout),
                           "stderr": str(job.paths.stderr), "result": str(job.paths.result_pickle)}
                          for job, what in zip(jobs, step.what)],
            })
    except (FailedJobError, OSError, subprocess.SubprocessError) as exc:
        if submitted:
            subprocess.run(["scancel", *submitted], capture_output=True, timeout=60, check=False)
        message = _refusal(str(exc).strip(), params)
        if submitted:
            message += f"\npartdistill: cancelled the jobs already submitted for this pipeline: {' '.join(submitted)}"
        raise SubmissionError(message) from None

    command = shlex.join(["python", *sys.argv])
    ledger.append(run_dir, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command,
                            "sweep_dir": str(sweep_dir), "steps": entries})
    _announce(run_dir, steps, entries)


def _announce(run_dir: Path, steps: list, entries: list[dict]) -> None:
    lines = [f"partdistill: submitted the pipeline of {run_dir} as {sum(s.submit for s in steps)} SLURM job(s):"]
    for step, entry in zip(steps, entries):
        if not step.submit:
            lines.append(f"  {step.label:<24} still queued/running as {', '.join(step.live)}: not submitted again")
            continue
        kind = f"array {entry['job_id']} ({len(entry['tasks'])} tasks: {', '.join(step.what)})" if step.array \
            else f"job {entry['job_id']}"
        after = f"; {entry['after_kind']}:{','.join(entry['after'])}" if entry["after"] else ""
        lines.append(f"  {step.label:<24} {kind}; {entry['resources']}{after}")
    lines += [f"  status: partdistill status {run_dir}",
              f"  cancel: scancel {' '.join(e['job_id'] for e in entries if e.get('job_id'))}",
              "  rerun this command to resubmit only what is unfinished"]
    print("\n".join(lines), flush=True)
