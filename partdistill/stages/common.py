"""What the partitioned stages share: the device, the partitions to run, the shard loop, the summary.

Stages never import each other; shared mechanics live here, and stages meet only through the store.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from partdistill.config.ranges import check_partition
from partdistill.engine.distributed import environment
from partdistill.errors import UserError
from partdistill.stages.progress import listed
from partdistill.store import Store, class_key, partition_records
from partdistill.store.writer import Completed

log = logging.getLogger(__name__)


def device_of(cfg: DictConfig) -> torch.device:
    """`cfg.device`; auto = this process's GPU (its local rank's, in a job of several tasks), else the CPU."""
    if cfg.device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", environment().local_rank % torch.cuda.device_count())
    return torch.device(cfg.device)


def output_dir(cfg: DictConfig) -> Path:
    """The job's own folder (Hydra's output dir), or run_dir/eval/<suite> outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.run_dir) / "eval" / cfg.eval.suite


def complete_upstream(store_root: Path, upstream: str, reader: str) -> Store:
    """The `upstream` store that stage `reader` reads, refused while any of its partitions is incomplete (a
    failed array task): reading it would group or train on part of the data without a word."""
    store = Store.open(store_root, upstream)  # StoreMissing names the stage to run first
    missing = store.incomplete()
    if missing:
        raise UserError(
            f"{reader}: the {upstream} store in {store.folder} has incomplete partitions: {listed(missing)} "
            f"({len(missing)} of {store.num_partitions}), so {reader} would read only part of the data. Complete "
            "it first: run "
            f"stage={upstream} again with the same overrides (it skips the complete shards; on SLURM: -m "
            f"hydra/launcher=slurm stage={upstream} stage.partition=incomplete), or see its failed tasks with "
            "partdistill status RUN_DIR")
    return store


def model_identity(cfg: DictConfig) -> dict:
    """The model's part of a store identity; the seed sets the weights of a model built from config."""
    return {"name": cfg.model.name, "pretrained": cfg.model.pretrained, "weights": cfg.model.weights,
            "seed": cfg.seed if cfg.model.pretrained is None and cfg.model.weights is None else None}


def partitions_to_run(stage: DictConfig) -> list[int]:
    """Partition `stage.partition`, or all of 0..P-1 when it is null; in a job of several tasks each
    rank takes every world_size-th of them (rank r: the r-th, (r + world_size)-th, ...)."""
    check_partition(stage)
    selected = list(range(stage.num_partitions)) if stage.partition is None else [stage.partition]
    env = environment()
    return selected[env.rank::env.world_size]


def run_partitions(store: Store, stage: DictConfig, records: list[dict],
                   write: Callable[[int, list[dict], object], Counter]) -> dict:
    """Writes every selected partition that is not complete yet: `write(index, its records, shard)`
    fills one shard and returns its counts. Returns the summed counts and the shards written."""
    start, counts, written = time.perf_counter(), Counter(), 0
    for index in partitions_to_run(stage):
        if store.is_complete(index):
            log.info("%s: partition %d of %d is complete: skipped", store.stage, index, stage.num_partitions)
            continue
        part = partition_records(records, index, stage.num_partitions)
        with store.write_shard(index, classes=sorted({class_key(r) for r in part})) as shard:
            if isinstance(shard, Completed):  # another process wrote it while this one waited
                continue
            counts.update(write(index, part, shard))
        written += 1
    return {**counts, "partitions_written": written, "incomplete": len(store.incomplete()),
            "seconds": round(time.perf_counter() - start, 1)}


def print_summary(store: Store, result: dict, counted: str, stage: DictConfig, empty_hint: str) -> None:
    """One line: what this run counted, the shards it wrote, and what is still missing. Then, once every
    partition is complete, a store with no record at all is an error (`empty_hint`: the likely cause
    and fix), unless `stage.allow_empty`: judged over the whole stage, since one partition may rightly
    be empty (more partitions than classes) and must not fail its array task."""
    print(f"{store.stage}: {counted}, {result['partitions_written']} partition(s) written, "
          f"{result['incomplete']} incomplete, {result['seconds']} s -> {store.folder}")
    totals = store.summary()
    if totals["incomplete"] or totals["records"] or stage.allow_empty:
        return
    raise UserError(f"{store.stage}: all {store.num_partitions} partition(s) are complete but the store in "
                    f"{store.folder} holds no record ({totals['skipped']} sample(s) skipped): {empty_hint}. "
                    f"The next stage would have nothing to read. To keep an empty result on purpose, give "
                    f"stage.allow_empty=true.")
