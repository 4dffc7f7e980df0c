"""Stage 3 `proposal_learning`: a class-agnostic part-proposal Mask2Former trained on the grouping store.

Every part segment of the `pixel_grouping` store becomes an instance of one class ("part", label
0): objects covering no more than `stage.min_object_area_ratio` of their image are skipped, and a
part is kept when its area over the summed area of its object's parts exceeds `stage.min_area_ratio`
(the paper's MIN_OBJECT_AREA_RATIO / MIN_AREA_RATIO). Images with no part left are dropped.

The mapper augments in plain torch as the paper's LSJ pipeline (`stage.augmentation`): resize to fit
`base_size`, random horizontal flip, a relative random crop (`crop_relative`..1 of each side), scale
jitter (`min_scale`..`max_scale` of `base_size`), and a fixed `base_size` crop (padded where smaller);
the jittered crop is redrawn up to `retries` times until a part remains, then the weak augmentation
(resize + flip) is used. All randomness comes from a torch.Generator seeded with the per-sample seed
of the engine's `ResumableSampler(sample_seeds=True)`, so a sample is the same before and after a
resume and in whichever DataLoader worker maps it.

Training runs on the engine's `Trainer` (AdamW, warmup + multi-step, clipping, frozen `stage.freeze`
prefixes, checkpoints and `resume=auto` under `run_dir/proposal_learning/`); the loss is
transformers' Mask2Former criterion with `stage.loss`'s weights and point sampling, each term (and
each auxiliary layer's) logged separately. Every `stage.eval_period` iterations and at the end, the
model's top-k proposals on each suite of `stage.eval_suites` are scored by part-proposal AR
(overlapping and non-overlapping); smoke runs score at most `SMOKE_EVAL_IMAGES` images per suite.

    python launch.py experiment=smoke stage=proposal_learning
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from partdistill.config.resolver import project_root
from partdistill.data import catalog, masks
from partdistill.data.images import read_rgb
from partdistill.errors import UserError
from partdistill.stages.common import device_of
from partdistill.store import Store

STAGE = "proposal_learning"
UPSTREAM = "pixel_grouping"
SMOKE_EVAL_IMAGES = 16  # images per suite scored by a smoke run's evaluation
EVAL_BATCH = 2


# ---------------------------------------------------------------------------------------------
# data


def training_items(records, min_object_area_ratio: float, min_area_ratio: float) -> list[dict]:
    """{"file_name", "parts": [RLE, ...]} per image with at least one part passing the paper's filters."""
    items = []
    for record in records:
        parts = []
        for obj in record["objects"]:
            if obj["object_ratio"] <= min_object_area_ratio or not obj["parts"]:
                continue
            areas = [float(masks.decode(p["segmentation"]).sum()) for p in obj["parts"]]
            total = sum(areas)
            parts += [p["segmentation"] for p, area in zip(obj["parts"], areas)
                      if total > 0 and area > 0 and area / total > min_area_ratio]
        if parts:
            items.append({"file_name": record["file_name"], "parts": parts})
    return items


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _resize(image: torch.Tensor, part_masks: torch.Tensor, size: tuple[int, int]):
    """Image [3, H, W] float (bilinear), masks [N, H, W] bool (nearest) resized to `size`."""
    if tuple(image.shape[-2:]) == size:
        return image, part_masks
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    if len(part_masks):
        part_masks = F.interpolate(part_masks[None].float(), size=size, mode="nearest-exact")[0] > 0.5
    else:
        part_masks = part_masks.new_zeros((0, *size))
    return image, part_masks


def _fit(shape, target: float) -> tuple[int, int]:
    scale = target / max(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def augment(image: torch.Tensor, part_masks: torch.Tensor, aug, generator: torch.Generator, train: bool = True):
    """The paper's augmentation of one image: returns (image [3, S, S] float 0..255 zero-padded,
    masks [N', S, S] bool without the parts cropped away, valid (h, w) of the image in the top-left).

    `aug`: base_size, flip, crop_relative, min_scale, max_scale, retries. `train=False` only
    resizes to fit and pads.
    """
    size = int(aug.base_size)
    image, part_masks = _resize(image, part_masks, _fit(image.shape[-2:], size))
    if train and aug.flip and float(torch.rand((), generator=generator)) < 0.5:
        image, part_masks = image.flip(-1), part_masks.flip(-1)
    weak = (image, part_masks)
    result = None
    for _ in range(max(1, int(aug.retries)) if train else 0):
        img, pm = weak
        h, w = img.shape[-2:]
        # relative random crop
        ch = max(1, round(h * _uniform(generator, aug.crop_relative, 1.0)))
        cw = max(1, round(w * _uniform(generator, aug.crop_relative, 1.0)))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=generator))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=generator))
        img, pm = img[:, y0:y0 + ch, x0:x0 + cw], pm[:, y0:y0 + ch, x0:x0 + cw]
        # scale jitter: fit into base_size x scale
        scale = _uniform(generator, aug.min_scale, aug.max_scale)
        img, pm = _resize(img, pm, _fit(img.shape[-2:], size * scale))
        # fixed-size crop
        h, w = img.shape[-2:]
        y0 = int(torch.randint(0, max(h - size, 0) + 1, (), generator=generator))
        x0 = int(torch.randint(0, max(w - size, 0) + 1, (), generator=generator))
        img, pm = img[:, y0:y0 + size, x0:x0 + size], pm[:, y0:y0 + size, x0:x0 + size]
        keep = pm.flatten(1).any(1)
        if keep.any():
            result = (img, pm[keep])
            break
    if result is None:
        img, pm = weak
        result = (img, pm[pm.flatten(1).any(1)])
    img, pm = result
    h, w = img.shape[-2:]
    out_img = img.new_zeros((3, size, size))
    out_img[:, :h, :w] = img
    out_masks = pm.new_zeros((len(pm), size, size))
    out_masks[:, :h, :w] = pm
    return out_img, out_masks, (h, w)


class ProposalDataset(torch.utils.data.Dataset):
    """Items of `training_items`, indexed by the sampler's (index, seed) pairs; returns model targets."""

    def __init__(self, items: list[dict], aug):
        self.items, self.aug = items, aug

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        item = self.items[index]
        image = torch.from_numpy(np.array(read_rgb(item["file_name"]))).permute(2, 0, 1).float()
        part_masks = torch.from_numpy(np.stack([masks.decode(rle) for rle in item["parts"]]).astype(bool))
        generator = torch.Generator().manual_seed(int(seed))
        return to_model_sample(*augment(image, part_masks, self.aug, generator))


def to_model_sample(image: torch.Tensor, part_masks: torch.Tensor, valid: tuple[int, int]) -> dict:
    from partdistill.models.mask2former import PIXEL_MEAN, PIXEL_STD

    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    h, w = valid
    pixel_values = torch.zeros_like(image)
    pixel_values[:, :h, :w] = (image[:, :h, :w] - mean) / std
    pixel_mask = torch.zeros(image.shape[-2:], dtype=torch.int64)
    pixel_mask[:h, :w] = 1
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "mask_labels": part_masks.float(),
            "class_labels": torch.zeros(len(part_masks), dtype=torch.int64)}  # class-agnostic: one "part" class


def collate(samples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "pixel_mask": torch.stack([s["pixel_mask"] for s in samples]),
            "mask_labels": [s["mask_labels"] for s in samples],
            "class_labels": [s["class_labels"] for s in samples]}


# ---------------------------------------------------------------------------------------------
# model and loss


def configure_loss(model, loss_cfg) -> None:
    """Rebuilds the model's criterion with `stage.loss`'s weights and point sampling."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    config = model.config
    config.class_weight, config.mask_weight = float(loss_cfg.class_weight), float(loss_cfg.mask_weight)
    config.dice_weight, config.no_object_weight = float(loss_cfg.dice_weight), float(loss_cfg.no_object_weight)
    config.train_num_points = int(loss_cfg.train_num_points)
    config.oversample_ratio = float(loss_cfg.oversample_ratio)
    config.importance_sample_ratio = float(loss_cfg.importance_sample_ratio)
    model.weight_dict = {"loss_cross_entropy": config.class_weight, "loss_mask": config.mask_weight,
                         "loss_dice": config.dice_weight}
    model.criterion = Mask2FormerLoss(config=config, weight_dict=model.weight_dict)


def loss_terms(model, batch: dict) -> dict[str, torch.Tensor]:
    """The weighted loss terms (final layer and each auxiliary layer) of one batch; `model` may be DDP."""
    outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    core = model.module if hasattr(model, "module") else model
    return core.get_loss_dict(outputs.masks_queries_logits, outputs.class_queries_logits,
                              batch["mask_labels"], batch["class_labels"], outputs.auxiliary_logits)


# ---------------------------------------------------------------------------------------------
# evaluation


def _suite_records(suite: str, limit: int | None) -> tuple[str, list[dict]]:
    from partdistill.plan import suite_dataset

    dataset, splits = suite_dataset(suite)
    name = f"{dataset}_{splits[0]}"
    records = [r for r in catalog.load(name, project_root()) if r["annotations"]]
    return name, records[:limit] if limit else records


def evaluate_proposals(model, suites, size: int, device: torch.device, limit: int | None = None) -> dict:
    """{suite: AR@k and AR-nonoverlap@k of the model's top proposals} on each suite's scored split."""
    from partdistill.evaluation.proposals import ProposalAREvaluator
    from partdistill.evaluation.samples import Prediction
    from partdistill.models.mask2former import preprocess, top_instances

    results = {}
    for suite in suites:
        name, records = _suite_records(suite, limit)
        evaluator = ProposalAREvaluator(catalog.metadata(name, project_root()))
        k = max(evaluator.limits)
        for start in range(0, len(records), EVAL_BATCH):
            chunk = records[start:start + EVAL_BATCH]
            batch = preprocess([read_rgb(r["file_name"]) for r in chunk], size=size, device=device)
            with torch.no_grad():
                outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
            predictions = []
            for record, instances in zip(chunk, top_instances(outputs, batch, k=k)):
                if not instances:
                    predictions.append(Prediction.empty(record["height"], record["width"]))
                    continue
                predictions.append(Prediction(np.stack([i["mask"] for i in instances]),
                                              np.zeros(len(instances), np.int64),
                                              np.array([i["score"] for i in instances], np.float32)))
            evaluator.process(chunk, predictions)
        results[suite] = evaluator.evaluate()
    return results


# ---------------------------------------------------------------------------------------------
# the stage


def run(cfg: DictConfig) -> dict:
    from partdistill.engine.hooks import (
        EvalHook,
        JSONLWriter,
        PeriodicCheckpointer,
        TensorBoardWriter,
    )
    from partdistill.engine.sampler import ResumableSampler
    from partdistill.engine.solver import build_optimizer, build_scheduler
    from partdistill.engine.trainer import Trainer
    from partdistill.io import write_json_atomic
    from partdistill.models.mask2former import build_model

    s = cfg.stage
    store = Store.open(Path(cfg.run_dir) / "store", UPSTREAM)  # StoreMissing names the stage to run first
    items = training_items(store.records(), s.min_object_area_ratio, s.min_area_ratio)
    if not items:
        raise UserError(f"{STAGE}: no part of the '{UPSTREAM}' store in {store.folder} passes the filters "
                        f"(stage.min_object_area_ratio={s.min_object_area_ratio}, "
                        f"stage.min_area_ratio={s.min_area_ratio})")
    device = device_of(cfg)
    out_dir = Path(cfg.run_dir) / STAGE
    model = build_model(cfg.model, num_labels=1)
    configure_loss(model, s.loss)
    optimizer = build_optimizer(model, s.solver, list(s.freeze))
    scheduler = build_scheduler(optimizer, s.solver)
    dataset = ProposalDataset(items, s.augmentation)
    sampler = ResumableSampler(len(dataset), seed=cfg.seed, sample_seeds=True)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    per_rank = s.solver.ims_per_batch // world

    def make_loader(smp):
        return torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=smp, num_workers=s.num_workers,
                                           collate_fn=collate, persistent_workers=s.num_workers > 0)

    setting = cfg.get("setting")
    limit = SMOKE_EVAL_IMAGES if setting is not None and setting.get("name") == "smoke" else None

    def evaluate(m):
        return evaluate_proposals(m, list(s.eval_suites), int(s.augmentation.base_size), device, limit)

    eval_hook = EvalHook(s.eval_period if s.eval_suites else 0, evaluate if s.eval_suites else (lambda m: {}))
    trainer = Trainer(model, loss_terms, optimizer, scheduler, sampler=sampler, make_loader=make_loader,
                      ims_per_batch=s.solver.ims_per_batch, max_iter=s.solver.max_iter, run_dir=out_dir,
                      hooks=[eval_hook, JSONLWriter(), TensorBoardWriter(), PeriodicCheckpointer(s.checkpoint_period)],
                      clip_grad_norm=s.solver.clip_grad_norm, amp=s.solver.amp, device=device, resume=s.resume,
                      keep_checkpoints=s.keep_checkpoints)
    metrics = trainer.train()
    result = {"images": len(items), "parts": sum(len(i["parts"]) for i in items), "start_iter": trainer.start_iter,
              "iterations": trainer.iter, **metrics}
    if trainer.is_main:
        write_json_atomic(out_dir / "metrics.json", {"stage": STAGE, **result,
                                                     "eval": eval_hook.results if eval_hook.last_iter is not None else {}})
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.2f}" for k, v in metrics.items()
                          if k.startswith("eval/") and k.split("/")[-1].startswith("AR@"))
        loss = f"loss {metrics['total_loss']:.4g}, " if "total_loss" in metrics else ""
        print(f"{STAGE}: {len(items)} images, iterations {trainer.start_iter}->{trainer.iter}, {loss}"
              f"{shown or 'no evaluation'} -> {out_dir}")
    return result
