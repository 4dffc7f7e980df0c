"""The training parts of `bench_gpu.py`: one engine step of proposal learning or distillation per batch
size, and the training loader's throughput.

A step is the engine's own (`engine.trainer.Trainer._step`: batch to the device, forward under bf16
autocast on a GPU, the stage's loss, backward, full-model clipping, AdamW, schedule), on a model set up
as `stages/proposal_learning.py` and `stages/distillation.py` set theirs up (`configure_loss` or the
class-conditioned loss, `engine.solver.build_optimizer` freezing `stage.freeze`). Its batches are made
by `data.augmentation.InstanceDataset` from generated JPEGs, as the stage's loader makes them; the same
batch is fed every step, so the loader is measured apart (`loader_rate`).
"""
from __future__ import annotations

import itertools
import tempfile
import time

import torch

from gpu_common import build_on, free, is_oom, median_time, peak_gib
from partdistill.data.augmentation import InstanceDataset, collate
from partdistill.data.images import loader_workers
from partdistill.engine.sampler import ResumableSampler
from partdistill.engine.solver import build_optimizer, build_scheduler
from partdistill.engine.trainer import Trainer
from partdistill.models.conditioned_head import conditioned_loss_terms, configure_conditioned_loss, normalize_queries
from partdistill.models.inputs import to_model_sample
from partdistill.models.losses import configure_loss, loss_terms


def stage_items(items: list[dict], stage: str, classes: int, parts: int) -> list[dict]:
    """The generated items as the stage's training items: distillation's carry an object class (spread
    over all `classes`, which size the head) and part labels below `parts`."""
    if stage != "distillation":
        return items
    return [{**item, "object_class": i % classes, "labels": [j % parts for j in range(len(item["segments"]))]}
            for i, item in enumerate(items)]


def _set_up(cfg, stage: str, num_labels: int, device: torch.device):
    """(model, loss_fn, optimizer, scheduler) as the stage builds them before `training.train`."""
    s = cfg.stage
    model = build_on(cfg.model, device, num_labels)
    if stage == "distillation":
        if s.query_feature_normalize:
            normalize_queries(model)
        configure_conditioned_loss(model, s.loss, int(s.num_part_classes))
        loss_fn = conditioned_loss_terms(int(s.num_part_classes))
    else:
        configure_loss(model, s.loss)
        loss_fn = loss_terms
    optimizer = build_optimizer(model, s.solver, list(s.freeze))
    return model, loss_fn, optimizer, build_scheduler(optimizer, s.solver)


def train_sweep(cfg, stage: str, num_labels: int, items: list[dict], batches: list[int], device: torch.device,
                warmup: int, repeat: int, budget_s: float) -> dict:
    """Step time, images/s and peak memory per batch size, ascending, until the first out-of-memory.

    The first batch size always runs; a later one is skipped when its expected time (the last step
    time scaled by the batch) would end past `budget_s` from the start of the sweep.
    """
    s = cfg.stage
    begin = time.perf_counter()
    model, loss_fn, optimizer, scheduler = _set_up(cfg, stage, num_labels, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"stage": stage, "num_labels": num_labels, "freeze": list(s.freeze), "amp": bool(s.solver.amp),
           "parameters": sum(p.numel() for p in model.parameters()), "trainable": trainable,
           "image_size": int(s.augmentation.base_size), "points": []}
    dataset = InstanceDataset(items, s.augmentation, to_model_sample)
    samples: list[dict] = []
    last = None  # (batch, step seconds)
    with tempfile.TemporaryDirectory() as run_dir:
        for b in batches:
            if last is not None:
                expected = last[1] * b / last[0] * (warmup + repeat)
                if time.perf_counter() - begin + expected > budget_s:
                    out["points"].append({"batch": b, "skipped": f"time budget ({budget_s:.0f} s per sweep)"})
                    break
            while len(samples) < b:  # augmented once, reused by every batch size
                samples.append(dataset[(len(samples) % len(items), 1000 + len(samples))])
            batch = collate(samples[:b])
            trainer = Trainer(model, loss_fn, optimizer, scheduler, sampler=ResumableSampler(len(items)),
                              make_loader=lambda sampler: None, ims_per_batch=b, max_iter=warmup + repeat,
                              run_dir=run_dir, clip_grad_norm=s.solver.clip_grad_norm, amp=s.solver.amp,
                              device=device, resume="never", progress=False)
            model.train()
            data = itertools.repeat(batch)
            free(device)
            try:
                timing = median_time(lambda t=trainer, m=model, d=data: t._step(m, d), device, warmup, repeat)
                point = {"batch": b, "step_s": timing, "images_per_s": b / timing["median_s"],
                         "peak_memory_gib": peak_gib(device), "loss": trainer.metrics["total_loss"]}
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if not is_oom(exc):
                    raise
                out["points"].append({"batch": b, "oom": str(exc).splitlines()[0][:200]})
                optimizer.zero_grad(set_to_none=True)  # the gradients of the failed step
                break
            finally:
                del trainer, data
                free(device)
            out["points"].append(point)
            last = (b, timing["median_s"])
    del model, optimizer, scheduler
    free(device)
    out["seconds"] = time.perf_counter() - begin
    return out


def loader_rate(items: list[dict], s, per_rank: int, batches: int) -> dict:
    """Samples/s of the training loader as `stages/training.py` builds it (the stage's augmentation,
    per-sample seeds, `loader_workers(stage.num_workers)` worker processes, `collate`), in steady state:
    from the batch by which every worker has delivered one to the last."""
    workers = loader_workers(s.num_workers)
    dataset = InstanceDataset(items, s.augmentation, to_model_sample)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=ResumableSampler(len(items), seed=0,
                                         sample_seeds=True), num_workers=workers, collate_fn=collate,
                                         persistent_workers=workers > 0)
    first = min(workers, batches - 2)
    start = time.perf_counter()
    data, arrivals = iter(loader), []
    for _ in range(batches):
        batch = next(data)
        arrivals.append(time.perf_counter())
    assert batch["pixel_values"].shape[0] == per_rank and all(len(m) for m in batch["mask_labels"]), "training samples"
    del data, loader  # stops the workers
    steady = (batches - 1 - first) * per_rank / (arrivals[-1] - arrivals[first])
    return {"workers": workers, "batch": per_rank, "batches": batches, "samples_per_s": steady,
            "first_batch_s": arrivals[0] - start, "samples_per_s_with_startup": batches * per_rank / (arrivals[-1] - start)}
