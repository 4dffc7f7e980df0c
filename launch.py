"""partdistill's entry point: compose the config, check the datasets it needs, run one stage or the pipeline.

    python launch.py --help
    python launch.py experiment=paper stage=pixel_grouping dry_run=true
    python launch.py -m hydra/launcher=slurm stage=pixel_grouping stage.partition=incomplete

`stage.partition=all|incomplete` is expanded here, before Hydra parses (partdistill/sweeps.py).
`--cfg job|all` prints the config as the stage runs with it, the experiment's values merged into
`stage` (partdistill/config/compose.py), which Hydra's own printing, done before any code of ours
runs, would not show.
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
        config.apply_experiment(cfg, HydraConfig.get().overrides.task)
        if cfg.dry_run:
            hydra_cfg = HydraConfig.get()
            launcher = hydra_cfg.runtime.choices["hydra/launcher"]
            config.ranges.check(cfg)
            reports = plan.check_datasets(cfg)
            print(plan.describe(cfg, reports, launcher, config.launcher_params(cfg, hydra_cfg)))
            plan.require(reports)
            return
        plan.preflight([cfg])
        plan.check_device(cfg)
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


def print_config_if_asked() -> None:
    """`--cfg job|all [--resolve]` (without -m or --package): the merged config, then exit."""
    from omegaconf import OmegaConf

    from partdistill import plan, sweeps

    args = sys.argv[1:]
    flags = [i for i, a in enumerate(args) if a in ("--cfg", "-c")]
    if not flags or flags[0] + 1 >= len(args) or args[flags[0] + 1] not in ("job", "all"):
        return
    if any(a in sweeps.MULTIRUN_FLAGS + ("--package", "-p") for a in args):
        return  # Hydra prints these itself
    with plan.exit_on_user_error():
        cfg = config.compose(sweeps.overrides_of(args, keep_hydra=True), hydra=args[flags[0] + 1] == "all")
        print(OmegaConf.to_yaml(cfg, resolve="--resolve" in args), end="")
    sys.exit(0)


if __name__ == "__main__":
    expand_shorthands()
    print_config_if_asked()
    main()
