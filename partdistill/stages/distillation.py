"""Stage 5 `distillation`: self-train Mask2Former on the part-ranking store with a class-conditioned head.

Every part of the `part_ranking` store is an instance labelled with its part cluster (0..K-1, K =
`stage.num_part_classes` = part_ranking's `num_clusters`); the image's object class (its class key:
an ImageNet wnid) selects which K of the head's K x C + 1 outputs are trained
(`models.conditioned_head`, the paper's `apply_gradient_mask`). The training classes are the store's
class keys in sorted order; they are written to run_dir/distillation/head.json so the model can be
evaluated later (`stage=evaluate model.weights=RUN_DIR/distillation`).

Filters as the paper: objects covering no more than `stage.min_object_area_ratio` of the image are
skipped, parts need an area ratio (of the image) above `stage.min_area_ratio` and a score above
`stage.min_score`. The model starts from `model.pretrained` (22K: COCO Mask2Former) or, with
`stage.init_from=${run_dir}/proposal_learning` (1K), from the part-proposal model (all but its
class head). `stage.query_feature_normalize` (1K) L2-normalises the query embeddings
before the class head.

Evaluation (every `stage.eval_period` and at the end): unsupervised part mIoU with the majority
mapping on each suite of `stage.eval_suites`, each ground-truth object's class mapped to the training
classes by `data.class_map` (unmapped classes are scored unconditioned and logged).

    python launch.py experiment=smoke stage=distillation
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from partdistill.config import suite_dataset
from partdistill.data import catalog
from partdistill.data.augmentation import InstanceDataset
from partdistill.models.weights import load_all_but_head
from partdistill.errors import UserError
from partdistill.evaluation.part_miou import PartMIoUEvaluator
from partdistill.models.conditioned_head import (
    conditioned_loss_terms,
    configure_conditioned_loss,
    normalize_queries,
)
from partdistill.models.inputs import to_model_sample
from partdistill.models.mask2former import build_model
from partdistill.paths import project_root
from partdistill.stages.common import complete_upstream, device_of
from partdistill.stages.inference import parts_of_head
from partdistill.stages.training import score, suite_records, train
from partdistill.store import class_key

STAGE = "distillation"
UPSTREAM = "part_ranking"


def training_items(records, classes: list[str], num_parts: int, min_object_area_ratio: float, min_area_ratio: float,
                   min_score: float) -> list[dict]:
    """{"file_name", "segments", "labels" (part cluster), "object_class" (index in `classes`)} per image
    with at least one part passing the filters."""
    index = {key: i for i, key in enumerate(classes)}
    items = []
    for record in records:
        segments, labels = [], []
        for obj in record["objects"]:
            if obj["object_ratio"] <= min_object_area_ratio:
                continue
            for part in obj["parts"]:
                if part["ratio"] > min_area_ratio and part["score"] > min_score:
                    if not 0 <= part["label"] < num_parts:
                        raise UserError(f"{STAGE}: the '{UPSTREAM}' store has part label {part['label']} (image "
                                        f"{record['file_name']}) but stage.num_part_classes={num_parts}: set it to "
                                        f"the part_ranking stage's num_clusters")
                    segments.append(part["segmentation"])
                    labels.append(int(part["label"]))
        if segments:
            items.append({"file_name": record["file_name"], "segments": segments, "labels": labels,
                          "object_class": index[class_key(record)]})
    return items


def evaluate_parts(model, suites, head: dict, size: int, device: torch.device, batch_size: int,
                   limit: int | None = None, run_eval=None) -> dict:
    """{suite: part mIoU (majority mapping, learned on the suite's match split) of the class-conditioned
    parts} on each suite; `head` as written to head.json (classes, train_data, num_parts)."""
    results = {}
    for suite in suites:
        _, (split, match_split) = suite_dataset(suite, run_eval)
        args = (head, size, device, batch_size, limit, run_eval)
        match = score_parts(model, suite, 1, *args) if match_split != split else None
        results[suite] = score_parts(model, suite, 0, *args).evaluate(match=match)
    return results


def score_parts(model, suite: str, split: int, head: dict, size: int, device: torch.device, batch_size: int,
                limit: int | None, run_eval=None):
    """A PartMIoUEvaluator that has processed the model's parts on a suite's split (0 scored, 1 match)."""
    name, records = suite_records(suite, limit, split, run_eval)
    meta = catalog.metadata(name, project_root())
    return score(model, PartMIoUEvaluator(meta, "majority", "synset"), records, parts_of_head(head, meta, name),
                 size, device, batch_size)


def run(cfg: DictConfig) -> dict:
    s = cfg.stage
    run_dir = Path(cfg.run_dir)
    store = complete_upstream(run_dir / "store", UPSTREAM, STAGE)
    records = list(store.records())
    classes = sorted({class_key(r) for r in records})
    num_parts = int(s.num_part_classes)
    items = training_items(records, classes, num_parts, s.min_object_area_ratio, s.min_area_ratio, s.min_score)
    if not items:
        raise UserError(f"{STAGE}: no part of the '{UPSTREAM}' store in {store.folder} passes the filters "
                        f"(stage.min_object_area_ratio={s.min_object_area_ratio}, stage.min_area_ratio="
                        f"{s.min_area_ratio}, stage.min_score={s.min_score})")
    model = build_model(cfg.model, num_labels=num_parts * len(classes))
    if s.init_from is not None and cfg.model.weights is None:
        load_all_but_head(model, s.init_from)
    if s.query_feature_normalize:
        normalize_queries(model)
    configure_conditioned_loss(model, s.loss, num_parts)
    device = device_of(cfg)
    head = {"kind": "conditioned_parts", "num_labels": num_parts * len(classes), "num_parts": num_parts,
            "classes": classes, "train_data": cfg.data.train, "query_feature_normalize": s.query_feature_normalize}

    def evaluate(m):
        return evaluate_parts(m, list(s.eval_suites), head, int(s.augmentation.base_size), device,
                              int(s.eval_batch_size), s.eval_images, cfg.eval)

    return train(cfg, STAGE, model, InstanceDataset(items, s.augmentation, to_model_sample), conditioned_loss_terms(num_parts),
                 evaluate if s.eval_suites else None,
                 {"images": len(items), "parts": sum(len(i["segments"]) for i in items), "classes": len(classes)},
                 head=head)
