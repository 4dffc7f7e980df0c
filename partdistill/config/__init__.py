"""Configuration: structured schemas, the dataset resolver, and their registration with Hydra."""
from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from partdistill.config.resolver import CHECKOUT, project_root, resolve_dataset
from partdistill.config.schema import SCHEMAS

CONFIG_DIR = CHECKOUT / "conf"


def register() -> None:
    """Registers the resolvers and the schemas; call before composing any config (idempotent)."""
    OmegaConf.register_new_resolver("pd_dataset", resolve_dataset, replace=True)
    OmegaConf.register_new_resolver("pd_root", lambda: str(project_root()), replace=True)
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)


def suite_config_path(suite: str) -> Path:
    return CONFIG_DIR / "eval" / f"{suite}.yaml"


def launcher_params(cfg: DictConfig, hydra_cfg: DictConfig) -> dict:
    """The launcher's settings resolved against the whole config (they interpolate stage.resources)."""
    full = OmegaConf.create(
        {**OmegaConf.to_container(cfg, resolve=False), "hydra": OmegaConf.to_container(hydra_cfg, resolve=False)}
    )
    return {key: OmegaConf.select(full, f"hydra.launcher.{key}") for key in full.hydra.launcher}
