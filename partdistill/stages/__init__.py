"""Pipeline stages: `partdistill.stages.<name>.run(cfg) -> dict` for each stage in STAGES.

Stages never import each other; they meet through the pseudo-label store and checkpoints under
`cfg.run_dir`, so each can run as its own job and resume.
"""
from __future__ import annotations

import copy
import importlib
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from partdistill.config import suite_config
from partdistill.engine.distributed import init_distributed, is_main_process
from partdistill.errors import ConfigError
from partdistill.evaluation.summary import write_suite_summary
from partdistill.stages import progress
from partdistill.stages.names import PARTITIONED, STAGE_ORDER, STAGES, TRAINING

__all__ = ["PARTITIONED", "STAGES", "STAGE_ORDER", "TRAINING", "eval_suites", "jobs_of", "run", "stages_to_run"]



def stages_to_run(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(name, stage config) of each stage the config runs, in order."""
    if cfg.stage.name == "pipeline":
        unknown = [name for name in cfg.stage.stages if name not in STAGE_ORDER]
        if unknown:
            raise ConfigError(f"stage.stages names unknown stages {unknown}; the pipeline's stages are {STAGE_ORDER}")
        return [(name, cfg.stage[name]) for name in cfg.stage.stages]
    return [(cfg.stage.name, cfg.stage)]


def eval_suites(cfg: DictConfig) -> list[str]:
    """The suites a pipeline's evaluation scores: `stage.eval_suites`, else the run's own `eval=`."""
    return [str(s) for s in cfg.stage.get("eval_suites") or []] or [str(cfg.eval.suite)]


def jobs_of(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(stage name, the config it runs with) for each stage of `cfg` in order: the pipeline's stages each
    as a single-stage config (`stage` = `stage.<name>`), its evaluation once per suite (`eval=<suite>`)."""
    out = []
    for name, stage_cfg in stages_to_run(cfg):
        suites = eval_suites(cfg) if cfg.stage.name == "pipeline" and name == "evaluate" else [None]
        for suite in suites:
            job = copy.deepcopy(cfg)
            with open_dict(job):
                job.stage = stage_cfg
            if suite is not None:  # key by key: `eval` keeps its schema
                for key, value in OmegaConf.to_container(suite_config(suite, cfg), resolve=False).items():
                    job.eval[key] = value
            out.append((name, job))
    return out


def run(cfg: DictConfig) -> dict[str, dict]:
    """Runs the selected stage, or every stage of the pipeline in order; returns each stage's result.

    A pipeline skips the stages done under its configuration (`progress.skippable`), so a rerun goes on
    where the last one stopped; each stage that returns is recorded as made (`progress.mark_made`)."""
    jobs = jobs_of(cfg)
    pipeline = cfg.stage.name == "pipeline"
    # a job of several tasks (hydra.launcher.tasks_per_node / nodes, torchrun): training stages run as
    # one DDP group; partitioned stages share the selected partitions out among the ranks
    init_distributed()
    results = {}
    for step, (name, job) in enumerate(jobs, 1):
        key = progress.record_key(job)
        done = progress.skippable(job) if pipeline else None
        if pipeline:
            print(f"== {step}/{len(jobs)} {key}" + (f": done under this configuration ({done.detail}), skipped"
                                                   if done else ""), flush=True)
        if done:
            continue
        seed_everything(cfg.seed)  # a model built from config gets the same weights on every run
        results[key if pipeline else name] = importlib.import_module(f"{__name__}.{name}").run(job)
        if is_main_process():
            progress.mark_made(job)
    if pipeline and "evaluate" in cfg.stage.stages and is_main_process():
        print(write_suite_summary(Path(cfg.run_dir) / "eval", eval_suites(cfg)), flush=True)
    return results


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
