"""Pipeline stages: `partdistill.stages.<name>.run(cfg) -> dict` for each stage in plan.STAGES.

Stages never import each other; they meet through the pseudo-label store and checkpoints under
`cfg.run_dir`, so each can run as its own job and resume.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from omegaconf import DictConfig, open_dict

from partdistill.plan import STAGES, StageNotAvailable, stages_to_run


def available_stages() -> list[str]:
    return [name for name in STAGES if importlib.util.find_spec(f"{__name__}.{name}") is not None]


def require_stages(names: list[str]) -> None:
    """Raises StageNotAvailable naming every stage in `names` that has no implementation."""
    have = available_stages()
    missing = [name for name in names if name not in have]
    if missing:
        which = "stage " + ", ".join(f"'{n}'" for n in missing) + (" is" if len(missing) == 1 else " are")
        raise StageNotAvailable(
            f"partdistill: {which} not implemented in this version of partdistill "
            f"(implemented stages: {', '.join(have) or 'none yet'})."
        )


def stage_module(name: str) -> ModuleType:
    require_stages([name])
    return importlib.import_module(f"{__name__}.{name}")


def run(cfg: DictConfig) -> dict[str, dict]:
    """Runs the selected stage, or every stage of the pipeline in order; returns each stage's result."""
    from partdistill.engine.distributed import init_distributed

    selected = stages_to_run(cfg)
    require_stages([name for name, _ in selected])  # all present before any runs
    # a job of several tasks (hydra.launcher.tasks_per_node / nodes, torchrun): training stages run as
    # one DDP group; partitioned stages share the selected partitions out among the ranks
    init_distributed()
    modules = {name: stage_module(name) for name, _ in selected}
    results = {}
    for step, (name, stage_cfg) in enumerate(selected, 1):
        if len(selected) > 1:
            print(f"== {step}/{len(selected)} {name}", flush=True)
        stage_run_cfg = cfg.copy()
        with open_dict(stage_run_cfg):
            stage_run_cfg.stage = stage_cfg
        seed_everything(cfg.seed)  # a model built from config gets the same weights on every run
        results[name] = modules[name].run(stage_run_cfg)
    return results


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
