"""partdistill's entry point: compose the config, check the datasets it needs, run one stage or the pipeline.

    python launch.py --help
    python launch.py experiment=paper stage=pixel_grouping dry_run=true
    python launch.py -m hydra/launcher=slurm stage=pixel_grouping stage.partition=incomplete

`stage.partition=all|incomplete` is expanded here, before Hydra parses (partdistill/sweeps.py).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from partdistill import config

config.register()  # resolvers and schemas must exist before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from partdistill import plan, stages

    with plan.exit_on_user_error():
        if cfg.dry_run:
            hydra_cfg = HydraConfig.get()
            launcher = hydra_cfg.runtime.choices["hydra/launcher"]
            reports = plan.check_datasets(cfg)
            print(plan.describe(cfg, reports, launcher, config.launcher_params(cfg, hydra_cfg)))
            plan.require(reports)
            return
        plan.preflight([cfg])
        stages.run(cfg)


def expand_shorthands() -> None:
    """`stage.partition=all|incomplete` -> the partitions they stand for (partdistill/sweeps.py)."""
    if not any(arg in ("stage.partition=all", "stage.partition=incomplete") for arg in sys.argv[1:]):
        return
    from partdistill import plan, sweeps

    with plan.exit_on_user_error():
        try:
            sys.argv = sweeps.expand(sys.argv)
        except sweeps.NothingToRun as done:
            print(done)
            sys.exit(0)


if __name__ == "__main__":
    expand_shorthands()
    main()
