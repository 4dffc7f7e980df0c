"""Stage 1 `object_masks`: one object per training image, written to the store.

`stage.source=model` keeps the most confident instance of the instance-segmentation Mask2Former
(its mask, score and COCO class). The paper's ImageNet-22K run used Detic, which no maintained
library packages; the COCO-instance Mask2Former (`model=m2f_swin_large`, the paper's own
compute-friendly choice for ImageNet-1K) replaces it here. `stage.source=gt` takes every
ground-truth object instead, where the data set has them (the synthetic data, supervised ablations).

    python launch.py experiment=compute_friendly stage=object_masks stage.partition=3
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from partdistill.data import catalog, masks
from partdistill.data.images import image_loader
from partdistill.models.inputs import preprocess
from partdistill.models.mask2former import build_model
from partdistill.models.outputs import top_instances
from partdistill.paths import project_root
from partdistill.stages.common import (
    device_of,
    model_identity,
    print_summary,
    run_partitions,
)
from partdistill.store import Store, class_key

STAGE = "object_masks"


def identity(cfg: DictConfig) -> dict:
    """What determines this stage's output (the store refuses shards written under anything else)."""
    s = cfg.stage
    out = {"stage": STAGE, "data": cfg.data.train, "source": s.source.value}
    if s.source.value == "model":
        out.update(model=model_identity(cfg), image_size=s.image_size, score_threshold=s.score_threshold)
    return out


def store_record(record: dict, height: int, width: int, objects: list[dict]) -> dict:
    return {
        "image_id": record["image_id"], "file_name": record["file_name"], "height": height, "width": width,
        "class_key": class_key(record), "class_id": record.get("class_id"), "objects": objects,
    }


def _gt_objects(records: list[dict], shard) -> Counter:
    counts = Counter()
    for record in tqdm(records, desc="ground-truth objects", unit="img", disable=None):
        objects = [{"segmentation": a["segmentation"], "score": 1.0, "category_id": a["category_id"]}
                   for a in record.get("annotations", [])]
        if objects:
            shard.add(store_record(record, record["height"], record["width"], objects))
            counts["images"] += 1
            counts["objects"] += len(objects)
        else:
            shard.skip(record["file_name"], "no ground-truth object")
            counts["skipped"] += 1
    return counts


def _model_objects(s: DictConfig, model, records: list[dict], shard, device: torch.device,
                   workers: int | None) -> Counter:
    """Each readable image's most confident instance (stage options `s`) into `shard`; the counts."""
    counts = Counter()
    loader = image_loader(records, s.batch_size, workers)
    for readable, skipped in tqdm(loader, desc="instance masks", unit="batch", disable=None):
        for sample in skipped:
            shard.skip(sample["record"]["file_name"], sample["skipped"])
        counts["skipped"] += len(skipped)
        if not readable:
            continue
        batch = preprocess([sample["image"] for sample in readable], size=s.image_size, device=device)
        with torch.no_grad():
            outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
        for sample, instances in zip(readable, top_instances(outputs, batch, k=1)):
            height, width = sample["image"].shape[:2]
            if not instances or instances[0]["score"] < s.score_threshold or not instances[0]["mask"].any():
                shard.skip(sample["record"]["file_name"], f"no instance scoring >= {s.score_threshold}")
                counts["skipped"] += 1
                continue
            top = instances[0]
            obj = {"segmentation": masks.encode(top["mask"]), "score": top["score"], "category_id": top["label"]}
            shard.add(store_record(sample["record"], height, width, [obj]))
            counts["images"] += 1
            counts["objects"] += 1
    return counts


def run(cfg: DictConfig) -> dict:
    s = cfg.stage
    records = catalog.load(cfg.data.train, project_root())
    store = Store(Path(cfg.run_dir) / "store", STAGE, s.num_partitions, identity(cfg))
    if s.source.value == "gt":
        result = run_partitions(store, s, records, lambda index, part, shard: _gt_objects(part, shard))
    else:
        model = build_model(cfg.model).eval().to(device_of(cfg))
        result = run_partitions(store, s, records, lambda index, part, shard: _model_objects(s, model, part, shard, device_of(cfg),
                                                                                     cfg.data.num_workers))
    result = {"images": 0, "objects": 0, "skipped": 0, **result}
    if s.source.value == "gt":
        hint = (f"stage.source=gt takes the ground-truth objects of {cfg.data.train}, and it has none (ImageNet has "
                "no object annotations): give stage.source=model to take the instance model's most confident one")
    else:
        hint = (f"no image had an instance above stage.score_threshold={s.score_threshold} (or none could be read): "
                "lower the threshold, or check model.pretrained is an instance-segmentation model")
    print_summary(store, result, f"{result['images']} images, {result['objects']} objects, {result['skipped']} skipped",
                  s, hint)
    return result
