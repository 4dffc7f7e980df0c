"""Stage 3 `proposal_learning`: a class-agnostic part-proposal Mask2Former trained on the grouping store.

Every part segment of the `pixel_grouping` store becomes an instance of one class ("part", label
0): objects covering no more than `stage.min_object_area_ratio` of their image are skipped, and a
part is kept when its area over the summed area of its object's parts exceeds `stage.min_area_ratio`
(the paper's MIN_OBJECT_AREA_RATIO / MIN_AREA_RATIO). Images with no part left are dropped.

The mapper is `partdistill.data.augmentation` (the paper's LSJ augmentation, per-sample seeds).

Training runs on the engine's `Trainer` (AdamW, warmup + multi-step, clipping, frozen `stage.freeze`
prefixes, checkpoints and `resume=auto` under `run_dir/proposal_learning/`); the loss is
transformers' Mask2Former criterion with `stage.loss`'s weights and point sampling, each term (and
each auxiliary layer's) logged separately. Every `stage.eval_period` iterations and at the end, the
model's top-k proposals on each suite of `stage.eval_suites` are scored by part-proposal AR
(overlapping and non-overlapping); smoke runs score a few images per suite.

    python launch.py experiment=smoke stage=proposal_learning
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from partdistill.data import masks
from partdistill.data.augmentation import InstanceDataset
from partdistill.errors import UserError
from partdistill.models.inputs import to_model_sample
from partdistill.models.losses import configure_loss, loss_terms
from partdistill.models.mask2former import build_model
from partdistill.stages.common import complete_upstream, device_of
from partdistill.stages.training import score_proposals, suite_records, train

STAGE = "proposal_learning"
UPSTREAM = "pixel_grouping"


# ---------------------------------------------------------------------------------------------
# data


def training_items(records, min_object_area_ratio: float, min_area_ratio: float) -> list[dict]:
    """{"file_name", "segments": [RLE, ...], "labels": [0, ...]} per image with at least one part
    passing the paper's filters."""
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
            items.append({"file_name": record["file_name"], "segments": parts, "labels": [0] * len(parts)})
    return items


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate_proposals(model, suites, size: int, device: torch.device, batch_size: int, limit: int | None = None,
                       run_eval=None) -> dict:
    """{suite: AR@k and AR-nonoverlap@k of the model's top proposals} on each suite's scored split."""
    return {suite: score_proposals(model, *suite_records(suite, limit, 0, run_eval), size, device, batch_size)
            for suite in suites}


# ---------------------------------------------------------------------------------------------
# the stage


def run(cfg: DictConfig) -> dict:
    s = cfg.stage
    store = complete_upstream(Path(cfg.run_dir) / "store", UPSTREAM, STAGE)
    items = training_items(store.records(), s.min_object_area_ratio, s.min_area_ratio)
    if not items:
        raise UserError(f"{STAGE}: no part of the '{UPSTREAM}' store in {store.folder} passes the filters "
                        f"(stage.min_object_area_ratio={s.min_object_area_ratio}, "
                        f"stage.min_area_ratio={s.min_area_ratio})")
    device = device_of(cfg)
    model = build_model(cfg.model, num_labels=1)
    configure_loss(model, s.loss)

    def evaluate(m):
        return evaluate_proposals(m, list(s.eval_suites), int(s.augmentation.base_size), device,
                                  int(s.eval_batch_size), s.eval_images, cfg.eval)

    return train(cfg, STAGE, model, InstanceDataset(items, s.augmentation, to_model_sample), loss_terms,
                 evaluate if s.eval_suites else None,
                 {"images": len(items), "parts": sum(len(i["segments"]) for i in items)},
                 head={"kind": "proposals", "num_labels": 1})
