"""The settings schema of `hydra/launcher=slurm`: the plugin's submitit_slurm settings plus partdistill's own.

(No `from __future__ import annotations` here: Hydra's plugin scan executes this module without
registering it in sys.modules, where dataclasses would look string annotations up.)
"""
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class PartdistillSlurmConf(SlurmQueueConf):
    """conf/hydra/launcher/slurm.yaml sets the values."""

    _target_: str = "hydra_plugins.partdistill_launchers.launchers.SubmititSlurmLauncher"
    # copy the partdistill package and conf/ into <sweep dir>/.snapshot/<submission> and run the jobs from it
    snapshot: bool = True


OWN_KEYS = ("snapshot",)  # settings of this launcher that are not submitit parameters

ConfigStore.instance().store(group="hydra/launcher", name="partdistill_slurm_schema", node=PartdistillSlurmConf,
                             provider="partdistill")
