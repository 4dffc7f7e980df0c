"""Composing the config: the one place that turns overrides into the config a stage runs with.

An experiment file (`conf/experiment/<name>.yaml`) holds the values of every stage under
`stages.<stage>`. Hydra cannot merge a node of the composed config into the chosen stage (its
defaults list is built before any value exists, and `${...}` in a defaults list is the pattern
Hydra's docs call non-standard), so `apply_experiment` does it right after composition, in this
order of precedence: the stage's schema defaults < the experiment's `stages.<stage>` < the
command line's `stage.<key>=...`. The pipeline composes every stage under `stage.<stage>`; each
of them takes `stages.<stage>` the same way. `stages` is dropped afterwards: the values live in
`stage` only, which is what `python launch.py --cfg job` prints.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from partdistill.config.registry import CONFIG_DIR, register
from partdistill.errors import ConfigError
from partdistill.identity import flatten


def compose(overrides: Sequence[str], hydra: bool = False) -> DictConfig:
    """The config `launch.py` runs with for these overrides (`hydra=True`: with the `hydra` node)."""
    register()
    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():  # inside launch.py's Hydra app: its search path is conf/
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=hydra)
    else:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=hydra)
    return apply_experiment(cfg, overrides)


def _user_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys the command line sets (group choices such as `stage=pixel_grouping` are not keys).
    A dict value (`stage.kmeans={k:2}`) merges into the node as Hydra does, so it sets only its own leaves."""
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if "=" in o or o.startswith("~")])
    keys = []
    for override in parsed:
        key = override.key_or_group
        if "." not in key or key.startswith("hydra."):
            continue
        value = None if override.is_delete() or override.is_sweep_override() else override.value()
        keys += [f"{key}.{leaf}" for leaf in flatten(value)] if isinstance(value, dict) and value else [key]
    return keys


def _set_by_user(path: str, user_keys: list[str]) -> bool:
    return any(path == key or path.startswith(key + ".") for key in user_keys)


def apply_experiment(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Merges the experiment's `stages.<stage>` into `stage` (and the pipeline's `stage.<stage>`),
    leaving every key the command line (`overrides`) set as it is; removes `stages`. In place; returns
    `cfg`. A config without `stages` (already applied) is returned unchanged."""
    values = cfg.get("stages")
    if values is None:
        return cfg
    values = OmegaConf.to_container(values, resolve=False)
    user_keys = _user_keys(overrides)
    targets = {cfg.stage.name: "stage"}
    if cfg.stage.name == "pipeline":
        targets.update({name: f"stage.{name}" for name in cfg.stage if isinstance(cfg.stage[name], DictConfig)
                        and name != "resources"})
    unknown = sorted(set(values) - set(_stage_names()))
    if unknown:
        raise ConfigError(f"stages.{unknown[0]} in the experiment names no stage; the stages are {_stage_names()}")
    for name, where in targets.items():
        for path, value in flatten(values[name]).items() if values.get(name) else ():
            full = f"{where}.{path}"
            if not _set_by_user(full, user_keys):
                try:
                    OmegaConf.update(cfg, full, value, merge=False)
                except OmegaConfBaseException as exc:
                    raise ConfigError(f"stages.{name}.{path}={value!r} (experiment={cfg.experiment.name}) does not "
                                      f"fit {where}: {str(exc).splitlines()[0]}") from exc
    with open_dict(cfg):
        del cfg["stages"]
    return cfg


@lru_cache(maxsize=None)
def _stage_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (CONFIG_DIR / "stage").glob("*.yaml")))


@lru_cache(maxsize=None)
def _suite_node(suite: str) -> dict:
    known = sorted(p.stem for p in (CONFIG_DIR / "eval").glob("*.yaml"))
    if suite not in known:
        raise ConfigError(f"stage.eval_suites names an unknown suite {suite!r}; the suites are {known}")
    return OmegaConf.to_container(compose([f"eval={suite}"]).eval, resolve=False)


def suite_config(suite: str, cfg: DictConfig) -> DictConfig:
    """The `eval` node of `suite` as Hydra composes it (`eval=<suite>`), its interpolations resolved
    against the run's config `cfg` (the demo's suite reads `data.name`). The run's own suite is `cfg.eval`."""
    if cfg.eval.suite == suite:
        return cfg.eval
    run = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    run.eval = _suite_node(suite)
    return run.eval


def suite_dataset(suite: str, run_eval: DictConfig) -> tuple[str, list[str]]:
    """The dataset and splits (scored, matched) of an evaluation suite named in stage.eval_suites, as
    Hydra composes `eval=<suite>`, resolved against the run's config (`run_eval`: its composed `eval`)."""
    node = suite_config(suite, run_eval._get_root())
    return node.dataset, [node.split, node.match_split]
