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


def stage_module(name: str) -> ModuleType:
    if importlib.util.find_spec(f"{__name__}.{name}") is None:
        have = ", ".join(available_stages()) or "none yet"
        raise StageNotAvailable(
            f"partdistill: stage '{name}' is not implemented in this version of partdistill "
            f"(implemented stages: {have})."
        )
    return importlib.import_module(f"{__name__}.{name}")


def run(cfg: DictConfig) -> dict[str, dict]:
    """Runs the selected stage, or every stage of the pipeline in order; returns each stage's result."""
    selected = stages_to_run(cfg)
    modules = {name: stage_module(name) for name, _ in selected}  # all present before any runs
    results = {}
    for name, stage_cfg in selected:
        stage_run_cfg = cfg.copy()
        with open_dict(stage_run_cfg):
            stage_run_cfg.stage = stage_cfg
        results[name] = modules[name].run(stage_run_cfg)
    return results
