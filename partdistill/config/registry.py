"""Where the YAML configs live, and what Hydra needs registered before it composes them."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from partdistill.config.schema import SCHEMAS
from partdistill.paths import CHECKOUT, project_root

CONFIG_DIR = CHECKOUT / "conf"


def register() -> None:
    """Registers the `${pd_root:}` resolver and the schemas; call before composing any config (idempotent)."""
    OmegaConf.register_new_resolver("pd_root", lambda: str(project_root()), replace=True)
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
