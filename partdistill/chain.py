"""The pipeline as a chain of SLURM jobs: which jobs, the config each task runs, what each waits for.

    python launch.py -m hydra/launcher=slurm experiment=paper stage=pipeline

becomes, in the pipeline's order, one step per stage: a job array over the partitions still
incomplete for a partitioned stage (one task each), one job for a training stage (N nodes x G GPUs
from its own `resources`), one job per suite of `stage.eval_suites` for the evaluation, and a last
small job, after all the evaluations whatever their outcome, that writes the summary table (and
runs the report when the pipeline has one). Each step waits for every earlier step (`afterok`).

What is done is not submitted again: a stage done under this configuration (stages/progress.py)
is skipped, a partitioned stage resubmits only its incomplete partitions, a training stage resumes
from its newest checkpoint (the stage's own resume), and a step whose jobs are still queued or
running for this run (the ledger, stages/ledger.py) is waited for instead of submitted twice.
The SLURM side (executors, sbatch, the ledger entry) is the launcher's
(hydra_plugins/partdistill_launchers/pipeline.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, open_dict

from partdistill.config import register
from partdistill.evaluation.summary import write_suite_summary
from partdistill.stages import PARTITIONED, eval_suites, jobs_of, progress
from partdistill.stages import run as run_stages

SUMMARY = "summary"


@dataclass
class Step:
    label: str  # the stage, `evaluate-<suite>`, or `summary`
    stage: str
    configs: list[DictConfig]  # one per task; empty for a step already in the queue
    what: list[str]  # per task: "partition 3", "" ...
    array: bool  # partitioned stages: a job array, whatever its size
    after_any: bool = False  # waits for the earlier steps to end, not to succeed (the summary)
    live: list[str] = field(default_factory=list)  # its task ids still queued or running: not submitted again

    @property
    def submit(self) -> bool:
        return not self.live


def plan(cfg: DictConfig, live: dict[str, list[str]]) -> tuple[list[Step], list[str]]:
    """The steps to submit or wait for, in order, and a line per step left out because it is done."""
    steps, skipped = [], []
    run_dir = Path(cfg.run_dir)
    report = None
    for name, job in jobs_of(cfg):
        label = progress.record_key(job)
        if name == "report":
            report = job  # runs in the summary job, after the evaluations
            continue
        if live.get(label):
            steps.append(Step(label, name, [], [], name in PARTITIONED, live=live[label]))
            continue
        found = progress.of_job(job)
        if progress.skippable(job, found):
            skipped.append(f"{label}: done under this configuration ({found.detail})")
            continue
        if name in PARTITIONED:
            # a store complete under other values still gets one task: the stage refuses it with the differences
            parts = found.incomplete or [0]
            configs = [_with_partition(job, i) for i in parts]
            steps.append(Step(label, name, configs, [f"partition {i}" for i in parts], True))
        else:
            steps.append(Step(label, name, [job], [""], False))
    evaluations = [s for s in steps if s.stage == "evaluate"]
    report_due = report is not None and progress.skippable(report) is None
    unsummarized = "evaluate" in cfg.stage.stages and not (run_dir / "eval" / "summary.md").is_file()
    if evaluations or report_due or unsummarized:
        summary = copy.deepcopy(cfg)
        steps.append(Step(SUMMARY, SUMMARY, [summary], [""], False, after_any=True, live=live.get(SUMMARY, [])))
    elif live.get(SUMMARY):
        steps.append(Step(SUMMARY, SUMMARY, [], [], False, after_any=True, live=live[SUMMARY]))
    return steps, skipped


def _with_partition(job: DictConfig, index: int) -> DictConfig:
    task = copy.deepcopy(job)
    with open_dict(task):
        task.stage.partition = index
    return task


def finish(cfg: DictConfig) -> str:
    """The chain's last job: the summary table over the pipeline's suites (a suite whose evaluation failed
    shows as missing), then the report when the pipeline has one. Returns the table."""
    register()  # a job submitted as a function, not through launch.py: the config's resolvers
    table = write_suite_summary(Path(cfg.run_dir) / "eval", eval_suites(cfg))
    print(table, flush=True)
    if "report" in cfg.stage.stages:
        report = next(job for name, job in jobs_of(cfg) if name == "report")
        if progress.skippable(report) is None:
            run_stages(report)
    return table
