"""What the training stages share: the suites they score, and one call that trains a Mask2Former
on a dataset of augmented samples with the engine (optimizer, schedule, hooks, checkpoints, resume)
and writes the stage's metrics.json.

Stages never import each other; the training mechanics live here and in `partdistill.engine`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from partdistill.data import catalog
from partdistill.data.augmentation import collate
from partdistill.data.images import loader_workers
from partdistill.engine.distributed import is_main_process
from partdistill.io import write_json_atomic
from partdistill.paths import project_root


def suite_records(suite: str, limit: int | None = None, split: int = 0, run_eval=None) -> tuple[str, list[dict]]:
    """(catalog name, records with annotations) of a suite's scored split (`split=1`: its match split);
    `run_eval`: the run's composed `eval` (plan.suite_dataset)."""
    from partdistill.config import suite_dataset

    dataset, splits = suite_dataset(suite, run_eval)
    return split_records(f"{dataset}_{splits[split]}", limit)


def split_records(name: str, limit: int | None = None) -> tuple[str, list[dict]]:
    """(name, the first `limit` or all records with annotations) of a catalog name, e.g. pascal_parts_val."""
    records = [r for r in catalog.load(name, project_root()) if r["annotations"]]
    return name, records[:limit] if limit else records


def score(model, evaluator, records: list[dict], to_predictions, size: int, device: torch.device, batch_size: int):
    """Feeds the model's predictions on `records` (images fit into `size`, `batch_size` per forward pass)
    to `evaluator`; returns it."""
    from partdistill.stages.inference import predict_records

    for chunk, predictions in predict_records(model, records, to_predictions, size, device, batch_size):
        evaluator.process(chunk, predictions)
    return evaluator


def score_proposals(model, name: str, records: list[dict], size: int, device: torch.device, batch_size: int,
                    **options) -> dict:
    """AR@k and AR-nonoverlap@k of the model's top proposals on `records` of dataset `name`;
    `options` go to the ProposalAREvaluator (min_gt_iou, object_class)."""
    from partdistill.evaluation.proposals import ProposalAREvaluator
    from partdistill.stages.inference import proposals

    evaluator = ProposalAREvaluator(catalog.metadata(name, project_root()), **options)
    return score(model, evaluator, records, proposals(max(evaluator.limits)), size, device, batch_size).evaluate()


HEAD_FILE = "head.json"


def train(cfg: DictConfig, stage_name: str, model, dataset, loss_fn, evaluate: Callable[[object], Mapping] | None,
          summary: dict, head: dict) -> dict:
    """Trains `model` on `dataset` (samples of `data.augmentation`) under run_dir/<stage_name>/ with the
    stage's solver, freeze list, hooks and resume policy; `evaluate(model)` every `stage.eval_period`
    and at the end. Writes metrics.json (the `summary` counts, the last step's metrics, the last
    evaluation) and prints one line. Returns what it wrote.

    `head` describes the class head for whoever loads the checkpoints later (`stage=evaluate
    model.weights=...`): {"kind": "proposals" | "conditioned_parts" | "semantic", "num_labels": N, ...};
    it is written to run_dir/<stage_name>/head.json with the model's config.
    """
    from partdistill.engine.hooks import (
        EvalHook,
        JSONLWriter,
        PeriodicCheckpointer,
        TensorBoardWriter,
    )
    from partdistill.engine.sampler import ResumableSampler
    from partdistill.engine.solver import build_optimizer, build_scheduler
    from partdistill.engine.trainer import Trainer
    from partdistill.stages.common import device_of

    s = cfg.stage
    out_dir = Path(cfg.run_dir) / stage_name
    if is_main_process():
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
    trainer = Trainer(model, loss_fn, optimizer, scheduler, sampler=sampler, make_loader=make_loader,
                      ims_per_batch=s.solver.ims_per_batch, max_iter=s.solver.max_iter, run_dir=out_dir,
                      hooks=[eval_hook, JSONLWriter(), TensorBoardWriter(), PeriodicCheckpointer(s.checkpoint_period)],
                      clip_grad_norm=s.solver.clip_grad_norm, amp=s.solver.amp, device=device_of(cfg),
                      resume=s.resume, keep_checkpoints=s.keep_checkpoints)
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
