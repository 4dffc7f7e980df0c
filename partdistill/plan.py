"""What a composed config will do: its stages, the datasets they read, its jobs and resources.

`launch.py` checks the datasets here before anything runs or is submitted, and prints
`describe()` for `dry_run=true`; `partdistill data check` uses the same dataset needs.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import DictConfig

from partdistill.config import ranges, suite_dataset
from partdistill.data import synthetic
from partdistill.data.layout import LayoutReport
from partdistill.data.missing import DatasetLayoutError, check
from partdistill.errors import ConfigError, user_error_of
from partdistill.paths import datasets_root, describe_root
from partdistill.stages import PARTITIONED, eval_suites, jobs_of, stages_to_run

# what each stage reads: the training data (data=), the suite (eval=), the suites in stage.eval_suites
INPUTS = {
    "instance_training": ("data", "eval"),
    "object_masks": ("data",),
    "pixel_grouping": ("data", "suites"),
    "proposal_learning": ("data", "suites"),
    "part_ranking": ("data",),
    "distillation": ("data", "suites"),
    "evaluate": ("eval",),
    "finetune": ("eval",),
    "report": ("eval",),
}
SLURM_KEYS = (
    "partition", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "mem_per_gpu",
    "timeout_min", "signal_delay_s", "max_num_timeout", "array_parallelism",
)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turns a UserError (a missing dataset, a bad value or file, a missing stage, a full or read-only
    disk) into its plain message on stderr and exit status 2; anything else keeps its traceback."""
    try:
        yield
    except Exception as exc:
        known = user_error_of(exc)
        if known is None:
            raise
        print(known, file=sys.stderr)
        sys.exit(2)


def dataset_needs(cfg: DictConfig) -> dict[str, list[str]]:
    """Dataset name -> the splits the config's stages read (a run checks these, not every split)."""
    needs: dict[str, list[str]] = {}
    for name, job in jobs_of(cfg):  # a pipeline's evaluation: one job per suite, each with its own eval
        sources = ("eval",) if name == "pixel_grouping" and job.stage.evaluate else INPUTS[name]
        for source in sources:
            if source == "data":
                _add_need(needs, job.data.name, ["train"])
            elif source == "eval":
                _add_need(needs, job.eval.dataset, [job.eval.split, job.eval.match_split])
            else:
                for suite in job.stage.eval_suites:
                    _add_need(needs, *suite_dataset(suite, job.eval))
    return needs


def _add_need(needs: dict[str, list[str]], dataset: str, splits: list[str]) -> None:
    known = needs.setdefault(dataset, [])
    for split in splits:
        if split not in known:
            known.append(split)


def check_datasets(cfg: DictConfig) -> list[LayoutReport]:
    write_synthetic([cfg])
    return [check(name, splits, only=True) for name, splits in dataset_needs(cfg).items()]


def write_synthetic(configs: list[DictConfig]) -> None:
    """Writes every keyed synthetic set (synthetic-s<seed>-n<images>) these configs read that is not on
    disk yet: the demo's data, made before the layout check that would otherwise miss it."""
    for cfg in configs:
        for dataset in dataset_needs(cfg):
            synthetic.ensure(dataset, datasets_root())


def require(reports: list[LayoutReport]) -> list[LayoutReport]:
    """Raises DatasetLayoutError naming every report with something missing."""
    broken = [r for r in reports if r.missing]
    if broken:
        raise DatasetLayoutError(broken)
    return reports


def preflight(configs: list[DictConfig]) -> None:
    """What must hold before any job of these configs runs or is submitted: every value in its range,
    partition indices in range, every dataset they read in place (each checked once)."""
    for cfg in configs:
        ranges.check(cfg)
    write_synthetic(configs)
    needs: dict[str, list[str]] = {}
    for cfg in configs:
        for name, stage in stages_to_run(cfg):
            if name in PARTITIONED:
                ranges.check_partition(stage)
        for dataset, splits in dataset_needs(cfg).items():
            _add_need(needs, dataset, splits)
    require([check(name, splits, only=True) for name, splits in needs.items()])


def _jobs(name: str, stage: DictConfig) -> str:
    res = stage.resources
    per_job = f"{res.nodes} node(s) x {res.gpus_per_node} GPU(s), {res.nodes * res.tasks_per_node} process(es)"
    if name in PARTITIONED:
        total = stage.num_partitions
        if stage.partition is not None:
            return f"partition {stage.partition} of {total}: 1 job of {per_job}"
        return (
            f"{total} partition(s): here one after another; as a SLURM job array of {total} tasks with "
            f"-m hydra/launcher=slurm stage.partition=all (= 'stage.partition=range(0,{total})'), each {per_job}; "
            f"stage.partition=incomplete submits only the partitions not complete in the store"
        )
    if "solver" in stage:
        solver = stage.solver
        per_process = solver.ims_per_batch / max(1, res.nodes * res.tasks_per_node)
        return (
            f"1 job of {per_job}; {solver.max_iter} iterations, batch {solver.ims_per_batch} "
            f"({per_process:g} per process), lr {solver.base_lr:g} with steps at {list(solver.steps)}"
        )
    return f"1 job of {per_job}"


def describe(cfg: DictConfig, reports: list[LayoutReport], launcher: str, launcher_cfg: dict) -> str:
    """The dry-run plan: stages, resolved dataset paths, jobs and the resources the launcher asks for."""
    choices = f"data={cfg.data.name}, eval={cfg.eval.suite}, model={cfg.model.name}"
    lines = [
        "partdistill dry run: nothing is run or submitted.",
        f"  experiment {cfg.experiment.name} ({choices})",
        f"  run dir   {cfg.run_dir}",
        f"  stages    {', '.join(name for name, _ in stages_to_run(cfg))}",
        f"  datasets  ({describe_root()})",
    ]
    lines += [f"    {r.dataset:<16} {r.status:<8} {r.path}" for r in reports]
    lines.append("  jobs")
    for name, stage in stages_to_run(cfg):
        jobs = _jobs(name, stage)
        if name == "evaluate" and cfg.stage.name == "pipeline":
            jobs = f"one per suite ({', '.join(eval_suites(cfg))}), each {jobs}"
        lines.append(f"    {name:<18} {jobs}")
    if launcher == "slurm" and cfg.stage.name == "pipeline":
        shared = ", ".join(f"{key}={launcher_cfg.get(key)}" for key in SLURM_KEYS
                           if key not in ("nodes", "gpus_per_node", "tasks_per_node"))
        lines.append("  launcher  slurm (submitit, with -m): one chain of dependent jobs, each stage's nodes, GPUs and "
                     "tasks as listed (an array per partitioned stage, a job per evaluation suite, a one-CPU summary "
                     f"job); every job: {shared}")
    elif launcher == "slurm":
        asked = ", ".join(f"{key}={launcher_cfg.get(key)}" for key in SLURM_KEYS)
        lines.append(f"  launcher  slurm (submitit, with -m): {asked}")
    else:
        lines.append(f"  launcher  {launcher}: in this process, one job after another")
    return "\n".join(lines)


def check_device(cfg: DictConfig) -> None:
    """`device=cuda` needs a GPU where the stage runs: checked as a run starts (a SLURM submission composes
    on a login node without one, so there it is the job's check)."""
    import torch

    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device}, but this machine has no CUDA device torch can use: run on a GPU "
                          "machine, or give device=auto (the GPU where there is one) or device=cpu")
