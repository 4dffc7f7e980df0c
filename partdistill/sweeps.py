"""What a sweep's jobs must not collide on: launch.py's partition shorthands, expanded before Hydra
parses the command line, and the training folders of a sweep's jobs, checked by the launchers.

    python launch.py -m hydra/launcher=slurm stage=pixel_grouping stage.partition=all
        -> stage.partition=range(0,P): one SLURM job array of P tasks (P = stage.num_partitions)
    python launch.py -m hydra/launcher=slurm stage=pixel_grouping stage.partition=incomplete
        -> stage.partition=2,7: only the partitions whose shard is not complete in the store
           (<run_dir>/store/<stage>), e.g. after some tasks of an array failed or were cancelled

The config is composed from the other overrides (Hydra's own `hydra...` overrides left out) to
learn the stage, P and run_dir. Without -m both shorthands become `stage.partition=null`: the
stage then runs every partition in turn in this process and skips the complete ones.

A training stage writes its checkpoints to run_dir/<stage> and resumes what it finds there only
under the same configuration (partdistill.engine.identity). The default run_dir,
`<setting>_<data>`, is the same for every job of a sweep over, say, `stage.solver.base_lr`: one
job would resume (or be refused by) another's checkpoints. `refuse_shared_training_folders` stops
such a sweep before any job runs or is submitted and suggests a run_dir per job.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from partdistill import config
from partdistill.errors import ConfigError
from partdistill.identity import differing_keys
from partdistill.plan import INPUTS
from partdistill.stages import PARTITIONED, stages_to_run
from partdistill.stages.finetune import output_name
from partdistill.stages.training import config_identity
from partdistill.store import Store

SHORTHAND = re.compile(r"^stage\.partition=(all|incomplete)$")
MULTIRUN_FLAGS = ("-m", "--multirun")
# launch.py flags whose value is the next argument (it is not an override)
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--experimental-rerun")


class NothingToRun(Exception):
    """stage.partition=incomplete found every partition complete."""


def overrides_of(args: list[str], keep_hydra: bool = False) -> list[str]:
    """The overrides among launch.py's arguments (flags and their values left out; Hydra's own
    `hydra...` overrides and the shorthands too, unless `keep_hydra`)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in FLAGS_WITH_VALUE:
            skip = True
            continue
        if arg.startswith("-") or "=" not in arg:
            continue
        if not keep_hydra and (arg.lstrip("+~").startswith(("hydra.", "hydra/")) or SHORTHAND.match(arg)):
            continue
        out.append(arg)
    return out


def _compose(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeps = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    if sweeps:
        raise ConfigError(
            f"stage.partition=all|incomplete cannot be combined with another sweep ({' '.join(sweeps)}): "
            "run one command per value, or give the partitions yourself, e.g. 'stage.partition=range(0,P)'"
        )
    return config.compose(overrides)


def partitions(word: str, overrides: list[str]) -> tuple[list[int], str]:
    """The partition indices `stage.partition=<word>` stands for, and a sentence saying why."""
    cfg = _compose(overrides)
    stage = cfg.stage
    if stage.name not in PARTITIONED or "num_partitions" not in stage:
        raise ConfigError(
            f"stage.partition={word} needs a partitioned stage ({', '.join(PARTITIONED)}); stage={stage.name} has none"
        )
    total = stage.num_partitions
    if word == "all":
        return list(range(total)), f"all {total} partitions of {stage.name}"
    folder = Path(cfg.run_dir) / "store" / stage.name
    if not (folder / "store.json").is_file():
        return list(range(total)), f"no {stage.name} store at {folder} yet: all {total} partitions"
    store = Store.open(folder.parent, stage.name)
    if store.num_partitions != total:
        raise ConfigError(
            f"{folder} holds {store.num_partitions} partitions but stage.num_partitions={total}: give "
            f"stage.num_partitions={store.num_partitions} to complete it (or another run_dir)"
        )
    missing = store.incomplete()
    if not missing:
        raise NothingToRun(f"partdistill: all {total} partitions of {stage.name} are complete in {folder}; "
                           "nothing to run")
    return missing, f"{len(missing)} of {total} partitions of {stage.name} are incomplete in {folder}"


def sweep_value(indices: list[int]) -> str:
    """`range(a,b)` for a contiguous run of two or more, else `i,j,k` (a single index: `i`)."""
    if len(indices) > 1 and indices == list(range(indices[0], indices[-1] + 1)):
        return f"range({indices[0]},{indices[-1] + 1})"
    return ",".join(str(i) for i in indices)


def expand(argv: list[str]) -> list[str]:
    """launch.py's argv with `stage.partition=all|incomplete` replaced by what it stands for.

    Raises:
        ConfigError: the shorthand does not apply (no partitioned stage, another sweep, a store
            with another partition count).
        NothingToRun: `incomplete` and every partition is complete.
    """
    found = [i for i, arg in enumerate(argv) if i > 0 and SHORTHAND.match(arg)]
    if not found:
        return argv
    word = SHORTHAND.match(argv[found[-1]]).group(1)
    multirun = any(arg in MULTIRUN_FLAGS for arg in argv[1:])
    if multirun:
        indices, why = partitions(word, overrides_of(argv[1:]))
        value = sweep_value(indices)
    else:
        value, why = "null", "without -m, every partition in turn in this process (complete shards are skipped)"
    print(f"partdistill: stage.partition={word} -> stage.partition={value} ({why})", file=sys.stderr)
    out = [arg for i, arg in enumerate(argv) if i not in found]
    return out + [f"stage.partition={value}"]


def refuse_shared_training_folders(configs: list[DictConfig]) -> None:
    """Raises ConfigError when jobs of a sweep would train into one folder under different configurations
    (the keys that count for resuming: partdistill.stages.training.config_identity), naming the swept
    keys and a run_dir that gives each job its own folder."""
    folders: dict[Path, list[tuple[int, dict]]] = {}
    shown: dict[Path, tuple[DictConfig, str]] = {}
    for num, cfg in enumerate(configs):
        for name, stage in stages_to_run(cfg):
            if "solver" not in stage:
                continue
            folder = Path(cfg.run_dir) / _training_folder(cfg, name, stage)
            identity = config_identity(cfg, stage)
            if "data" in INPUTS[name]:  # at run time the fingerprint of the training items tells
                identity["data"] = {"train": cfg.data.train}
            folders.setdefault(folder, []).append((num, identity))
            shown.setdefault(folder, (cfg, "stage." if cfg.stage.name == name else f"stage.{name}."))
    for folder, jobs in folders.items():
        keys = sorted({key for _, identity in jobs for key in differing_keys(jobs[0][1], identity)})
        if not keys:
            continue
        cfg, prefix = shown[folder]
        keys = [prefix + key.removeprefix("stage.") if key.startswith("stage.") else key for key in keys]
        per_job = "_".join(f"{key.rsplit('.', 1)[-1]}${{{key}}}" for key in keys)
        raise ConfigError(
            f"partdistill: jobs {', '.join(f'#{num}' for num, _ in jobs)} of this sweep would train into one folder, "
            f"{folder}, with different {', '.join(keys)}: each would resume, or be refused by, another's "
            f"checkpoints. Nothing was run or submitted. Give each job its own run_dir, e.g.\n"
            f"  run_dir='{cfg.run_dir}_{per_job}'\n"
            f"(a stage that reads an earlier stage's store or model looks for it in its own run_dir)"
        )


def _training_folder(cfg: DictConfig, name: str, stage: DictConfig) -> str:
    """A training stage's folder under run_dir: its name, and for finetune one folder per suite, head,
    fraction and subset seed (partdistill.stages.finetune.output_name)."""
    if name != "finetune":
        return name
    head = getattr(stage.head, "value", stage.head)
    return f"{name}/{output_name(cfg.eval.suite, head, stage.fraction, int(stage.subset_seed))}"
