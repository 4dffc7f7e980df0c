"""Pipeline stages: `partdistill.stages.<name>.run(cfg) -> dict` for each stage in STAGES.

Stages never import each other; they meet through the pseudo-label store and checkpoints under
`cfg.run_dir`, so each can run as its own job and resume.
"""
from __future__ import annotations

import importlib
import random

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from partdistill.engine.distributed import init_distributed
from partdistill.errors import ConfigError

STAGE_ORDER = ("instance_training", "object_masks", "pixel_grouping", "proposal_learning", "part_ranking",
               "distillation", "evaluate", "report")
STAGES = STAGE_ORDER + ("finetune",)
PARTITIONED = ("object_masks", "pixel_grouping", "part_ranking")


def stages_to_run(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(name, stage config) of each stage the config runs, in order."""
    if cfg.stage.name == "pipeline":
        unknown = [name for name in cfg.stage.stages if name not in STAGE_ORDER]
        if unknown:
            raise ConfigError(f"stage.stages names unknown stages {unknown}; the pipeline's stages are {STAGE_ORDER}")
        return [(name, cfg.stage[name]) for name in cfg.stage.stages]
    return [(cfg.stage.name, cfg.stage)]


def run(cfg: DictConfig) -> dict[str, dict]:
    """Runs the selected stage, or every stage of the pipeline in order; returns each stage's result."""
    selected = stages_to_run(cfg)
    # a job of several tasks (hydra.launcher.tasks_per_node / nodes, torchrun): training stages run as
    # one DDP group; partitioned stages share the selected partitions out among the ranks
    init_distributed()
    results = {}
    for step, (name, stage_cfg) in enumerate(selected, 1):
        if len(selected) > 1:
            print(f"== {step}/{len(selected)} {name}", flush=True)
        stage_run_cfg = cfg.copy()
        with open_dict(stage_run_cfg):
            stage_run_cfg.stage = stage_cfg
        seed_everything(cfg.seed)  # a model built from config gets the same weights on every run
        results[name] = importlib.import_module(f"{__name__}.{name}").run(stage_run_cfg)
    return results


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
