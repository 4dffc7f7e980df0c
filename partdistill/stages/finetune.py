"""Stage `finetune`: the paper's supervised and few-shot baselines, a Mask2Former fine-tuned on a part
dataset's own labels (method reference 2.6).

Training data is the training split of the suite chosen by `eval=` (`<eval.dataset>_train`:
pascal_parts_train, part_imagenet_train, cityscapes_part_train, synthetic_train); the scored split is
`eval.split` (the suite's, conf/eval/<suite>.yaml, unless overridden). Images with no annotated part are skipped (and counted).

- `stage.head=semseg`: one class per part class of the dataset (50 for Pascal-Part, 40 PartImageNet,
  23 Cityscapes-Part); the targets of an image are one mask per part class present, the union of that
  class over all its objects (Mask2Former's semantic targets). Scored by supervised part mIoU with the
  dataset's own part classes (`SupervisedMIoUEvaluator`), from Mask2Former's semantic inference.
- `stage.head=prop`: class-agnostic; every part instance is a mask of class 0 ("part"). Scored by
  part-proposal AR of the top proposals (`ProposalAREvaluator`).

Few-shot subset (`stage.fraction` f in (0, 1], `stage.subset_seed` s): the usable training images (those
with a part) are sorted by image_id (then file_name), permuted by `np.random.RandomState(s)`, and the
first max(1, floor(N x f)) are kept: the paper's rule (`np.random.seed(1234)`, shuffle, first
int(N x p / 100)) made independent of the order the records load in. The same seed and fraction give
the same images; a larger fraction keeps a superset; a fraction so small that N x f < 1 keeps one image.

The model starts from `model.pretrained` (the COCO instance Mask2Former in the paper and
compute-friendly settings), or from a trained partdistill model with `stage.init_from=RUN_DIR/distillation`
(all its weights but the class head: few-shot fine-tuning of the distilled model), with a new head of
`num_labels` classes, and trains on the engine with
`stage.solver`, `stage.freeze`, `stage.augmentation` (the paper's LSJ) and `stage.loss`; evaluation
runs every `stage.eval_period` iterations and at the end (smoke runs score a few images).

Outputs: run_dir/finetune/<suite>_<head>_f<fraction>_s<subset_seed>/ (e.g.
`finetune/pascal_parts_semseg_f0.1_s1234`), so the runs of a sweep over fractions, heads or suites never
share checkpoints: checkpoints/, metrics.jsonl, metrics.json (counts, last step, last evaluation),
eval_results.json (the last evaluation in full, per-part rows included), TensorBoard logs and head.json
(the head for whoever loads the checkpoints: kind "semantic" with the part class names, or "proposals").

    python launch.py experiment=smoke stage=finetune
    python launch.py stage=finetune eval=pascal_parts stage.fraction=0.1
    python launch.py -m stage=finetune eval=pascal_parts stage.fraction=0.01,0.05,0.1,1.0
    python launch.py experiment=paper stage=finetune eval=cityscapes_part stage.head=prop
    python launch.py stage=finetune eval=pascal_parts stage.fraction=0.1 'stage.init_from=${run_dir}/distillation'
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from partdistill.data import catalog, masks
from partdistill.data.augmentation import InstanceDataset
from partdistill.models.weights import load_all_but_head
from partdistill.engine.distributed import is_main_process
from partdistill.errors import ConfigError, UserError
from partdistill.evaluation.supervised import SupervisedMIoUEvaluator
from partdistill.io import write_json_atomic
from partdistill.models.inputs import to_model_sample
from partdistill.models.losses import configure_loss, loss_terms
from partdistill.models.mask2former import build_model
from partdistill.paths import project_root
from partdistill.stages.common import device_of
from partdistill.stages.inference import semantic
from partdistill.stages.training import score, score_proposals, split_records, train

STAGE = "finetune"
HEADS = ("semseg", "prop")


# ---------------------------------------------------------------------------------------------
# the few-shot subset


def check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise ConfigError(f"stage.fraction={fraction}: the share of training images must be in (0, 1] "
                          "(e.g. 0.01 for 1 %, 1.0 for all)")
    return fraction


def subset_size(total: int, fraction: float) -> int:
    """max(1, floor(total x fraction)) (0 for no records); floor tolerates float error (0.29 x 100 = 29)."""
    fraction = check_fraction(fraction)
    return 0 if total == 0 else max(1, min(total, math.floor(total * fraction + 1e-9)))


def _order_key(record: dict):
    image_id = record["image_id"]
    return (isinstance(image_id, str), image_id, str(record.get("file_name", "")))


def few_shot_subset(records: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """The records of a `fraction` subset for `seed`, in image_id order: the first `subset_size` of a seeded
    permutation of the records sorted by image_id, so stable for (seed, fraction), independent of the
    input order, and nested as the fraction grows."""
    ordered = sorted(records, key=_order_key)
    chosen = np.random.RandomState(seed).permutation(len(ordered))[: subset_size(len(ordered), fraction)]
    return [ordered[i] for i in sorted(chosen.tolist())]


# ---------------------------------------------------------------------------------------------
# targets


def semseg_item(record: dict) -> dict | None:
    """One mask per part class present in the image (the union over its objects), labelled by the part
    class id, in class order; None when the image has no non-empty part."""
    by_class: dict[int, list[dict]] = defaultdict(list)
    for obj in record.get("annotations", []):
        for part in obj.get("parts", []):
            by_class[int(part["category_id"])].append(part["segmentation"])
    segments, labels = [], []
    for class_id in sorted(by_class):
        rle = masks.union(by_class[class_id])
        if masks.area([rle])[0] > 0:
            segments.append(rle)
            labels.append(class_id)
    return {"file_name": record["file_name"], "segments": segments, "labels": labels} if segments else None


def prop_item(record: dict) -> dict | None:
    """Every non-empty part instance of the image as a mask of class 0; None when there is none."""
    rles = [p["segmentation"] for obj in record.get("annotations", []) for p in obj.get("parts", [])]
    segments = [r for r, a in zip(rles, masks.area(rles)) if a > 0]
    return {"file_name": record["file_name"], "segments": segments, "labels": [0] * len(segments)} \
        if segments else None


def training_items(records: Sequence[dict], head: str) -> tuple[list[dict], list[int]]:
    """(the training items of the records that have parts, the indexes of the records skipped)."""
    make = semseg_item if head == "semseg" else prop_item
    items, skipped = [], []
    for index, record in enumerate(records):
        item = make(record)
        if item is None:
            skipped.append(index)
        else:
            items.append(item)
    return items, skipped


def output_name(suite: str, head: str, fraction: float, subset_seed: int) -> str:
    """The run's folder under run_dir/finetune/: <suite>_<head>_f<fraction>_s<subset_seed>."""
    return f"{suite}_{head}_f{check_fraction(fraction):g}_s{subset_seed}"


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate_semantic(model, ev, size: int, device: torch.device, batch_size: int, limit: int | None = None) -> dict:
    """{suite: supervised mIoU, mACC, pixel_acc, per-part rows} of the model's semantic predictions."""
    name, records = split_records(f"{ev.dataset}_{ev.split}", limit)
    evaluator = SupervisedMIoUEvaluator(catalog.metadata(name, project_root()), _value(ev.object_class))
    return {ev.suite: score(model, evaluator, records, semantic(), size, device, batch_size).evaluate()}


def evaluate_proposals(model, ev, size: int, device: torch.device, batch_size: int, limit: int | None = None) -> dict:
    """{suite: AR@k and AR-nonoverlap@k of the model's top proposals}."""
    return {ev.suite: score_proposals(model, *split_records(f"{ev.dataset}_{ev.split}", limit), size, device, batch_size,
                                      min_gt_iou=float(ev.min_gt_iou), object_class=_value(ev.object_class))}


def _value(option) -> str:
    return getattr(option, "value", option)


# ---------------------------------------------------------------------------------------------
# the stage


def run(cfg: DictConfig) -> dict:
    s, ev = cfg.stage, cfg.eval
    head, fraction = _value(s.head), check_fraction(s.fraction)
    if head not in HEADS:
        raise ConfigError(f"stage.head={head}: choose one of {', '.join(HEADS)}")
    train_name = f"{ev.dataset}_train"
    records = catalog.load(train_name, project_root())
    usable, skipped = training_items(records, head)
    if not usable:
        raise UserError(f"{STAGE}: no image of {train_name} ({len(records)} images) has an annotated part; "
                        "check the dataset (partdistill data check)")
    skipped_set = set(skipped)
    with_parts = [r for i, r in enumerate(records) if i not in skipped_set]
    item_of = {id(r): item for r, item in zip(with_parts, usable)}
    items = [item_of[id(r)] for r in few_shot_subset(with_parts, fraction, int(s.subset_seed))]

    if head == "semseg":
        part_classes = list(catalog.metadata(train_name, project_root()).part_classes)
        num_labels = len(part_classes)
        head_info = {"kind": "semantic", "num_labels": num_labels, "dataset": ev.dataset,
                     "part_classes": part_classes}
    else:
        num_labels, head_info = 1, {"kind": "proposals", "num_labels": 1}
    head_info |= {"train_split": train_name, "fraction": fraction, "subset_seed": int(s.subset_seed),
                  "train_images": len(items)}

    device, size = device_of(cfg), int(s.augmentation.base_size)
    model = build_model(cfg.model, num_labels=num_labels)
    if s.init_from is not None:
        head_info["init_from"] = str(load_all_but_head(model, s.init_from))
    configure_loss(model, s.loss)
    scorer = evaluate_semantic if head == "semseg" else evaluate_proposals
    last: dict = {}

    def evaluate(m):
        last.clear()
        last.update(scorer(m, ev, size, device, int(s.eval_batch_size), s.eval_images))
        return last

    stage_name = f"{STAGE}/{output_name(ev.suite, head, fraction, int(s.subset_seed))}"
    summary = {"images": len(items), "images_with_parts": len(with_parts), "images_without_parts": len(skipped),
               "masks": sum(len(i["segments"]) for i in items)}
    result = train(cfg, stage_name, model, InstanceDataset(items, s.augmentation, to_model_sample), loss_terms, evaluate, summary,
                   head=head_info)
    if last and is_main_process():
        write_json_atomic(Path(cfg.run_dir) / stage_name / "eval_results.json",
                          {"iteration": result["iterations"], **last})
    return result
