"""Configuration: structured schemas, composition (experiment values into the stage), the dataset root."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from partdistill.config import ranges
from partdistill.config.compose import (
    apply_experiment,
    compose,
    suite_config,
    suite_dataset,
)
from partdistill.config.registry import CONFIG_DIR, register

__all__ = ["CONFIG_DIR", "apply_experiment", "compose", "launcher_params", "ranges", "register", "suite_config", "suite_dataset"]


def launcher_params(cfg: DictConfig, hydra_cfg: DictConfig) -> dict:
    """The launcher's settings resolved against the whole config (they interpolate stage.resources)."""
    full = OmegaConf.create(
        {**OmegaConf.to_container(cfg, resolve=False), "hydra": OmegaConf.to_container(hydra_cfg, resolve=False)}
    )
    return {key: OmegaConf.select(full, f"hydra.launcher.{key}") for key in full.hydra.launcher}
