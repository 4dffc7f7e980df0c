"""What of a run is done, read from its folder: one definition for the status view, the local pipeline
and the pipeline's SLURM submission.

Done is read from disk, never from a scheduler: every shard complete for a partitioned stage, a
checkpoint at `max_iter` plus metrics.json for a training stage, metrics.json for an evaluation (per
suite, under run_dir/eval/<suite>), summary.md for the report.

A pipeline skips a done stage only when it was made under the configuration it runs now: each stage
that returns writes `run_dir/.done/<stage>[-<suite>].json` with the hash of the values that made it
(`made_under`). A stage done under other values is run again, and its own checks (the store's and the
training folder's identity) then resume it or refuse with the differences; nothing is reused
silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from partdistill.engine.identity import recorded_max_iter
from partdistill.identity import identity_hash
from partdistill.io import write_json_atomic
from partdistill.models.weights import list_checkpoints
from partdistill.stages.names import PARTITIONED, TRAINING
from partdistill.store import Store

# options that change how a stage runs, not what it makes
NOT_MADE_BY = ("name", "resources", "partition", "num_workers", "allow_empty", "resume", "eval_period",
               "eval_images", "eval_batch_size", "checkpoint_period", "keep_checkpoints", "batch_size")


@dataclass
class Progress:
    stage: str
    state: str  # done | partial | not started
    detail: str
    path: Path
    incomplete: list[int] = field(default_factory=list)  # partitioned stages: the shards still to write

    def row(self) -> dict:
        return {"stage": self.stage, "state": self.state, "detail": self.detail, "path": str(self.path)}


def partitioned(run_dir: Path, stage: str, num_partitions: int | None = None) -> Progress:
    """A partitioned stage: shards complete out of P (`num_partitions`: the configured P, for a store not
    started yet)."""
    folder = run_dir / "store" / stage
    if not (folder / "store.json").is_file():
        return Progress(stage, "not started", "", folder, list(range(num_partitions or 0)))
    summary = Store.open(folder.parent, stage).summary()
    done, total, missing = len(summary["complete"]), summary["num_partitions"], summary["incomplete"]
    detail = f"{done}/{total} shards complete, {summary['records']} records, {summary['skipped']} skipped"
    if missing:
        detail += f"; incomplete: {listed(missing)}"
    return Progress(stage, "done" if not missing else "partial", detail, folder, list(missing))


def listed(partitions: list[int], most: int = 10) -> str:
    """Partition indices as a short list: `3,17,...` past `most` of them."""
    return ",".join(map(str, partitions[:most])) + (",..." if len(partitions) > most else "")


def training(run_dir: Path, stage: str, max_iter: int | None = None) -> Progress:
    """A training stage: its newest checkpoint against `max_iter` (default: the one its run recorded)."""
    folder = run_dir / stage
    checkpoints = list_checkpoints(folder / "checkpoints")
    if not checkpoints and not (folder / "metrics.json").is_file():
        return Progress(stage, "not started", "", folder)
    if max_iter is None:
        max_iter = recorded_max_iter(folder / "checkpoints")
    newest = checkpoints[0].iteration if checkpoints else None
    detail = f"iteration {newest if newest is not None else '-'} of {max_iter if max_iter is not None else '?'}"
    if checkpoints:
        detail += f", last checkpoint {checkpoints[0].state_path.name}"
    finished = (folder / "metrics.json").is_file() and (max_iter is None or (newest or 0) >= max_iter)
    return Progress(stage, "done" if finished else "partial", detail, folder)


def evaluation(run_dir: Path, suites: list[str] | None = None) -> Progress:
    """The pipeline's evaluation: metrics.json under run_dir/eval/<suite> for each suite (`suites`: those the
    run scores; default: whichever are there)."""
    folder = run_dir / "eval"
    found = sorted(p.parent.name for p in folder.glob("*/metrics.json"))
    if suites is None:
        return Progress("evaluate", "done" if found else "not started", ", ".join(found), folder)
    done = [s for s in suites if s in found]
    state = "done" if len(done) == len(suites) else "partial" if done else "not started"
    detail = f"{len(done)}/{len(suites)} suites scored" + (f" ({', '.join(done)})" if done else "")
    return Progress("evaluate", state, detail, folder)


def report(run_dir: Path) -> Progress:
    done = (run_dir / "report" / "summary.md").is_file()
    return Progress("report", "done" if done else "not started", "summary.md" if done else "", run_dir / "report")


def of_stage(run_dir: Path, name: str, stage: DictConfig | None = None, suites: list[str] | None = None) -> Progress:
    """Where stage `name` of the run in `run_dir` stands; `stage`: its config, for P and max_iter."""
    if name in PARTITIONED:
        return partitioned(run_dir, name, None if stage is None else int(stage.num_partitions))
    if name in TRAINING:
        return training(run_dir, name, None if stage is None else int(stage.solver.max_iter))
    if name == "evaluate":
        return evaluation(run_dir, suites)
    return report(run_dir)


# -- what made it ---------------------------------------------------------------------------------


def made_by(cfg: DictConfig) -> str:
    """The hash of what makes the outputs of `cfg.stage`: its options (not how it runs), the model, the
    training data, the seed and, for an evaluation, the suite."""
    options = OmegaConf.to_container(cfg.stage, resolve=True, enum_to_str=True)
    for key in NOT_MADE_BY:
        options.pop(key, None)
    made = {"stage": options, "model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
            "data": cfg.data.name, "seed": cfg.seed}
    if cfg.stage.name == "evaluate":
        made["eval"] = OmegaConf.to_container(cfg.eval, resolve=True, enum_to_str=True)
    return identity_hash(made)


def record_key(cfg: DictConfig) -> str:
    return f"evaluate-{cfg.eval.suite}" if cfg.stage.name == "evaluate" else str(cfg.stage.name)


def _record(cfg: DictConfig) -> Path:
    return Path(cfg.run_dir) / ".done" / f"{record_key(cfg)}.json"


def mark_made(cfg: DictConfig) -> None:
    """Records that `cfg.stage` returned, and under which values (see the module's docstring)."""
    _record(cfg).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(_record(cfg), {"stage": str(cfg.stage.name), "made_by": made_by(cfg)})


def made_under(cfg: DictConfig) -> bool:
    """Whether the outputs of `cfg.stage` on disk were made under these values."""
    try:
        return json.loads(_record(cfg).read_text()).get("made_by") == made_by(cfg)
    except (OSError, ValueError):
        return False


def of_job(cfg: DictConfig) -> Progress:
    """Where the one stage of `cfg` (a single-stage config; an evaluation: of its own suite) stands."""
    name = str(cfg.stage.name)
    return of_stage(Path(cfg.run_dir), name, cfg.stage, [str(cfg.eval.suite)] if name == "evaluate" else None)


def skippable(cfg: DictConfig, found: Progress | None = None) -> Progress | None:
    """The stage's progress (`found`, else read now) when it is done under this configuration (a pipeline
    then skips it), else None."""
    found = found or of_job(cfg)
    return found if found.state == "done" and made_under(cfg) else None
