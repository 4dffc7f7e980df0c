"""What the training stages share: the suites they score, and one call that trains a Mask2Former
on a dataset of augmented samples with the engine (optimizer, schedule, hooks, checkpoints, resume)
and writes the stage's metrics.json.

Stages never import each other; the training mechanics live here and in `partdistill.engine`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from partdistill.config import suite_dataset
from partdistill.data import catalog
from partdistill.data.augmentation import collate
from partdistill.data.images import loader_workers
from partdistill.engine.distributed import is_main_process
from partdistill.engine.hooks import (
    EvalHook,
    Hook,
    JSONLWriter,
    PeriodicCheckpointer,
    TensorBoardWriter,
)
from partdistill.engine.sampler import ResumableSampler
from partdistill.engine.solver import build_optimizer, build_scheduler
from partdistill.engine.trainer import Trainer
from partdistill.evaluation.proposals import ProposalAREvaluator
from partdistill.io import write_json_atomic
from partdistill.paths import project_root
from partdistill.stages.common import device_of
from partdistill.stages.inference import predict_records, proposals


def suite_records(suite: str, limit: int | None = None, split: int = 0, run_eval=None) -> tuple[str, list[dict]]:
    """(catalog name, records with annotations) of a suite's scored split (`split=1`: its match split);
    `run_eval`: the run's composed `eval` (plan.suite_dataset)."""
    dataset, splits = suite_dataset(suite, run_eval)
    return split_records(f"{dataset}_{splits[split]}", limit)


def split_records(name: str, limit: int | None = None) -> tuple[str, list[dict]]:
    """(name, the first `limit` or all records with annotations) of a catalog name, e.g. pascal_parts_val."""
    records = [r for r in catalog.load(name, project_root()) if r["annotations"]]
    return name, records[:limit] if limit else records


def score(model, evaluator, records: list[dict], to_predictions, size: int, device: torch.device, batch_size: int):
    """Feeds the model's predictions on `records` (images fit into `size`, `batch_size` per forward pass)
    to `evaluator`; returns it."""
    for chunk, predictions in predict_records(model, records, to_predictions, size, device, batch_size):
        evaluator.process(chunk, predictions)
    return evaluator


def score_proposals(model, name: str, records: list[dict], size: int, device: torch.device, batch_size: int,
                    **options) -> dict:
    """AR@k and AR-nonoverlap@k of the model's top proposals on `records` of dataset `name`;
    `options` go to the ProposalAREvaluator (min_gt_iou, object_class)."""
    evaluator = ProposalAREvaluator(catalog.metadata(name, project_root()), **options)
    return score(model, evaluator, records, proposals(max(evaluator.limits)), size, device, batch_size).evaluate()


HEAD_FILE = "head.json"
# options of a training stage that cannot change what it trains: checkpoints made under other values
# are resumed (stage.solver.max_iter: see partdistill.engine.identity for when it may differ)
UNCOUNTED = ("name", "eval_period", "eval_suites", "eval_images", "eval_batch_size", "checkpoint_period",
             "keep_checkpoints", "num_workers", "resources", "resume", "export", "solver.max_iter")


def config_identity(cfg: DictConfig, stage: DictConfig) -> dict:
    """What a training stage's config says it trains: its options but the UNCOUNTED ones, the model and
    the seed (what it trains on is the fingerprint of its items, `data_fingerprint`). Paths inside
    run_dir are written relative to it (`${run_dir}/...`): a run folder that moves keeps its identity."""
    options = OmegaConf.to_container(stage, resolve=True, enum_to_str=True)
    for key in UNCOUNTED:
        *parents, leaf = key.split(".")
        node = options
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    identity = {"stage": options, "model": OmegaConf.to_container(cfg.model, resolve=True), "seed": cfg.seed}
    return _within_run_dir(identity, str(Path(cfg.run_dir)))


def _within_run_dir(value, run_dir: str):
    if isinstance(value, dict):
        return {k: _within_run_dir(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_within_run_dir(v, run_dir) for v in value]
    if isinstance(value, str) and (value == run_dir or value.startswith(run_dir + os.sep)):
        return "${run_dir}" + value[len(run_dir):]
    return value


def data_fingerprint(items: list[dict]) -> dict:
    """The number of training items and a hash of their contents, with file names relative to their
    common folder (a dataset moved elsewhere keeps its fingerprint). An upstream store recomputed
    under another configuration, a changed filter or changed dataset files change it.

    Hashed in chunks rather than as one JSON text (partdistill.identity.identity_hash): at ImageNet
    scale the items' masks are gigabytes of text.
    """
    names = [item["file_name"] for item in items]
    try:
        base = os.path.commonpath([os.path.dirname(name) for name in names]) if names else ""
    except ValueError:  # absolute and relative names mixed: hashed as they are
        base = ""
    digest = hashlib.sha256()
    for start in range(0, len(items), 1024):
        chunk = [{**item, "file_name": item["file_name"][len(base):]} for item in items[start:start + 1024]]
        digest.update(json.dumps(chunk, sort_keys=True, separators=(",", ":"), default=_plain).encode())
    return {"images": len(items), "hash": digest.hexdigest()[:16]}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"a training item holds a {type(value).__name__}, which has no stable fingerprint")


class _OnStart(Hook):
    """Calls `write()` on the main process once the trainer has accepted the run folder's checkpoints
    (or started over): a refused run leaves the folder as it found it."""

    def __init__(self, write: Callable[[], None]):
        self.write = write

    def before_train(self) -> None:
        if self.trainer.is_main:
            self.write()


def train(cfg: DictConfig, stage_name: str, model, dataset, loss_fn, evaluate: Callable[[object], Mapping] | None,
          summary: dict, head: dict) -> dict:
    """Trains `model` on `dataset` (samples of `data.augmentation`) under run_dir/<stage_name>/ with the
    stage's solver, freeze list, hooks and resume policy; `evaluate(model)` every `stage.eval_period`
    and at the end. Writes metrics.json (the `summary` counts, the last step's metrics, the last
    evaluation) and prints one line. Returns what it wrote.

    `head` describes the class head for whoever loads the checkpoints later (`stage=evaluate
    model.weights=...`): {"kind": "proposals" | "conditioned_parts" | "semantic", "num_labels": N, ...};
    it is written to run_dir/<stage_name>/head.json with the model's config.

    What the run trains (`config_identity`, the head, the fingerprint of `dataset.items`) is recorded
    beside the checkpoints, and checkpoints made under another identity are refused (UserError)
    unless `stage.resume=restart`.
    """
    s = cfg.stage
    out_dir = Path(cfg.run_dir) / stage_name
    identity = None
    if is_main_process():  # rank 0 alone checks the checkpoints (engine.trainer)
        identity = {**config_identity(cfg, s), "head": _within_run_dir(head, str(Path(cfg.run_dir))),
                    "training_data": data_fingerprint(dataset.items)}

    def write_head():
        write_json_atomic(out_dir / HEAD_FILE, {"stage": stage_name, **head, "image_size": int(s.augmentation.base_size),
                                                "model": OmegaConf.to_container(cfg.model, resolve=True)})

    optimizer = build_optimizer(model, s.solver, list(s.freeze))
    scheduler = build_scheduler(optimizer, s.solver)
    sampler = ResumableSampler(len(dataset), seed=cfg.seed, sample_seeds=True)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    per_rank = s.solver.ims_per_batch // world

    def make_loader(smp):
        workers = loader_workers(s.num_workers)
        return torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=smp, num_workers=workers,
                                           collate_fn=collate, persistent_workers=workers > 0)

    eval_hook = EvalHook(s.eval_period if evaluate else 0, evaluate or (lambda m: {}))
    hooks = [_OnStart(write_head), eval_hook, JSONLWriter(), TensorBoardWriter(),
             PeriodicCheckpointer(s.checkpoint_period)]
    trainer = Trainer(model, loss_fn, optimizer, scheduler, sampler=sampler, make_loader=make_loader,
                      ims_per_batch=s.solver.ims_per_batch, max_iter=s.solver.max_iter, run_dir=out_dir, hooks=hooks,
                      clip_grad_norm=s.solver.clip_grad_norm, amp=s.solver.amp, device=device_of(cfg),
                      resume=s.resume, keep_checkpoints=s.keep_checkpoints, identity=identity)
    metrics = trainer.train()
    result = {**summary, "start_iter": trainer.start_iter, "iterations": trainer.iter, **metrics}
    if trainer.is_main:
        write_json_atomic(out_dir / "metrics.json", {"stage": stage_name, **result,
                                                     "eval": eval_hook.results if eval_hook.last_iter is not None else {}})
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.2f}" for k, v in metrics.items()
                          if k.startswith("eval/") and isinstance(v, float) and _headline(k))
        loss = f"loss {metrics['total_loss']:.4g}, " if "total_loss" in metrics else ""
        counts = ", ".join(f"{v} {k}" for k, v in summary.items())
        print(f"{stage_name}: {counts}, iterations {trainer.start_iter}->{trainer.iter}, {loss}"
              f"{shown or 'no evaluation'} -> {out_dir}")
    return result


def _headline(key: str) -> bool:
    last = key.split("/")[-1]
    return last.startswith("AR@") or last in ("mIoU", "C-mIoU", "A-mIoU", "top_instance_IoU")
