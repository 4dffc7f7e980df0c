"""partdistill's entry point: compose the config, check the datasets it needs, run one stage or the pipeline.

    python launch.py --help
    python launch.py experiment=paper stage=pixel_grouping dry_run=true
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from partdistill import config

config.register()  # resolvers and schemas must exist before Hydra composes


def _cause(exc: BaseException, kind: type) -> BaseException | None:
    """The first exception of `kind` in exc's chain (resolvers wrap what they raise)."""
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from partdistill import plan, stages
    from partdistill.config.resolver import DatasetLayoutError

    try:
        if cfg.dry_run:
            hydra_cfg = HydraConfig.get()
            launcher = hydra_cfg.runtime.choices["hydra/launcher"]
            reports = plan.check_datasets(cfg)
            print(plan.describe(cfg, reports, launcher, config.launcher_params(cfg, hydra_cfg)))
            plan.validate(cfg)
            return
        plan.validate(cfg)
        stages.run(cfg)
    except Exception as exc:  # a plain message for what the user can fix; a traceback for the rest
        known = _cause(exc, (DatasetLayoutError, stages.StageNotAvailable, plan.ConfigError))
        if known is None:
            raise
        print(known, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
