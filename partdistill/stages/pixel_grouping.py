"""Stage 2 `pixel_grouping`: class-agnostic part segments from k-means over backbone features.

For each object of the `object_masks` store: the backbone features named in `stage.feature_keys`
(paper: res3 + res4), resized bilinearly to the first key's grid and concatenated (optionally
L2-normalised), are clustered with K-means (K = `stage.kmeans.k`, paper 4) over the object's
feature pixels, all objects of a batch at once; every object pixel at the original resolution then
goes to a centroid (`stage.metric`: `dot`, the paper's scripts, or `l2`), giving up to K part masks.
Objects with no more feature pixels than clusters are skipped and counted. `stage.dcrf.enabled`
smooths the labels with a dense CRF (pydensecrf2) at the model's input resolution. With
`stage.eval_suites`, once the store is complete the grouping is also scored on each suite's GT objects
(as `stage.evaluate=true`), into run_dir/pixel_grouping/metrics.json and <suite>/.

    python launch.py experiment=smoke stage=pixel_grouping
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from partdistill.config import suite_dataset
from partdistill.data import catalog, masks
from partdistill.data.images import image_loader
from partdistill.engine.distributed import is_main_process
from partdistill.evaluation.saved import evaluate_saved
from partdistill.io import write_json_atomic
from partdistill.models.dcrf import dense_crf, require_dense_crf
from partdistill.models.grouping import GroupingParams, group_objects
from partdistill.models.inputs import preprocess
from partdistill.models.mask2former import build_model
from partdistill.models.outputs import backbone_features
from partdistill.paths import project_root
from partdistill.stages.common import (
    complete_upstream,
    device_of,
    model_identity,
    output_dir,
    print_summary,
    run_partitions,
)
from partdistill.store import Store, class_key

STAGE = "pixel_grouping"
UPSTREAM = "object_masks"


def identity(cfg: DictConfig, upstream_hash: str) -> dict:
    s = cfg.stage
    return {
        "stage": STAGE, "data": cfg.data.train, "object_masks": upstream_hash, "model": model_identity(cfg),
        "image_size": s.image_size, "feature_keys": list(s.feature_keys), "normalize": s.normalize,
        "metric": s.metric.value, "kmeans": OmegaConf.to_container(s.kmeans), "kmeans_seed": cfg.seed,
        "dcrf": OmegaConf.to_container(s.dcrf) if s.dcrf.enabled else False,
    }


def grouped_features(model, pixel_values: torch.Tensor, keys: list[str], normalize: bool) -> torch.Tensor:
    """[B, D, Hf, Wf]: the named backbone features on the first key's grid, concatenated."""
    feats = backbone_features(model, pixel_values, keys=tuple(keys))
    grid = feats[keys[0]].shape[-2:]
    stacked = torch.cat([F.interpolate(feats[k], size=grid, mode="bilinear", align_corners=False)
                         if feats[k].shape[-2:] != grid else feats[k] for k in keys], dim=1)
    return F.normalize(stacked, dim=1) if normalize else stacked


def _refine(image: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int, params) -> np.ndarray:
    """Dense-CRF smoothing of one object's labels (0 = background, 1..k = clusters), back to -1 outside."""
    refined = dense_crf(image, np.where(mask, labels + 1, 0), k + 1, params)
    return np.where(mask & (refined > 0), refined - 1, -1)


def _group_shard(s: DictConfig, model, items: list[dict], shard, generator: torch.Generator, device: torch.device,
                 workers: int | None) -> dict:
    """Groups the pixels of every object of `items` (stage options `s`) into `shard`; the counts."""
    params = GroupingParams(k=s.kmeans.k, metric=s.metric.value, iters=s.kmeans.iters, tol=s.kmeans.tol,
                            init=s.kmeans.init, n_init=s.kmeans.n_init)
    counts = Counter()
    loader = image_loader(items, s.batch_size, workers)
    for readable, skipped in tqdm(loader, desc="pixel grouping", unit="batch", disable=None):
        for sample in skipped:
            shard.skip(sample["record"]["file_name"], sample["skipped"])
        if not readable:
            continue
        batch = preprocess([sample["image"] for sample in readable], size=s.image_size, device=device)
        with torch.no_grad():
            features = grouped_features(model, batch.pixel_values, list(s.feature_keys), s.normalize)
        objects = [(b, masks.decode(obj["segmentation"])) for b, sample in enumerate(readable)
                   for obj in sample["record"]["objects"]]
        sources = [obj for sample in readable for obj in sample["record"]["objects"]]
        labels = group_objects(features, objects, batch.image_sizes, batch.original_sizes,
                               tuple(batch.pixel_values.shape[-2:]), params, generator)
        per_image: dict[int, list[dict]] = {}
        for (b, mask), source, label_map in zip(objects, sources, labels):
            if label_map is None:
                counts["too_small"] += 1
                shard.skip(readable[b]["record"]["file_name"], f"object with <= {params.k} feature pixels")
                continue
            if s.dcrf.enabled:
                label_map = _refine(readable[b]["image"], label_map, mask, params.k, s.dcrf)
            parts = [{"segmentation": masks.encode(label_map == c), "cluster": int(c)}
                     for c in np.unique(label_map[label_map >= 0])]
            height, width = mask.shape
            per_image.setdefault(b, []).append({
                "segmentation": source["segmentation"], "score": source["score"],
                "category_id": source["category_id"], "object_ratio": float(mask.sum()) / (height * width),
                "parts": parts,
            })
            counts["objects"] += 1
        for b, grouped in per_image.items():
            record = readable[b]["record"]
            shard.add({key: record[key] for key in ("image_id", "file_name", "height", "width", "class_key", "class_id")}
                      | {"objects": grouped})
            counts["images"] += 1
    return counts


def run(cfg: DictConfig) -> dict:
    s = cfg.stage
    if s.dcrf.enabled:  # before any work: a missing extra must not surface after hours of grouping
        require_dense_crf()
    if s.evaluate:
        ev = cfg.eval
        return evaluate_grouping(cfg, f"{ev.dataset}_{ev.split}", output_dir(cfg), ev.suite)
    store_root = Path(cfg.run_dir) / "store"
    upstream = complete_upstream(store_root, UPSTREAM, STAGE)
    store = Store(store_root, STAGE, s.num_partitions, identity(cfg, upstream.hash))
    model = build_model(cfg.model).eval().to(device_of(cfg))

    def write(index: int, part: list[dict], shard) -> Counter:
        items = list(upstream.records(classes={class_key(r) for r in part}))
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + index)  # the same shard on every rerun
        return _group_shard(s, model, items, shard, generator, device_of(cfg), cfg.data.num_workers)

    result = {"images": 0, "objects": 0, "too_small": 0,
              **run_partitions(store, s, catalog.load(cfg.data.train, project_root()), write)}
    print_summary(store, result, f"{result['images']} images, {result['objects']} objects grouped, "
                                 f"{result['too_small']} too small to group", s,
                  f"no object could be grouped ({result['too_small']} had fewer feature pixels than "
                  f"stage.kmeans.k={s.kmeans.k}): lower stage.kmeans.k, give a larger stage.image_size, or check "
                  f"the '{UPSTREAM}' store (partdistill store show {cfg.run_dir} {UPSTREAM})")
    if s.eval_suites and is_main_process() and not store.incomplete():  # once, when the store is whole
        scores = {}
        for suite in s.eval_suites:
            dataset, (split, _) = suite_dataset(suite, cfg.eval)
            scores[suite] = evaluate_grouping(cfg, f"{dataset}_{split}", Path(cfg.run_dir) / STAGE / suite, suite)
        write_json_atomic(Path(cfg.run_dir) / STAGE / "metrics.json", {"stage": STAGE, **result, "eval": scores})
    return result


class _Collector:
    """A shard-like sink that keeps records in memory (the grouping evaluation writes no store)."""

    def __init__(self):
        self.records, self.skipped = [], []

    def add(self, record: dict) -> None:
        self.records.append(record)

    def skip(self, path, reason: str) -> None:
        self.skipped.append((str(path), reason))


def evaluate_grouping(cfg: DictConfig, dataset: str, out: Path, suite: str) -> dict:
    """The paper's pixel-grouping evaluation: clusters of the GT objects of catalog split `dataset` as
    proposals, scored by part AR; predictions, metrics and overlays go to `out`."""
    ev = cfg.eval
    items = [{**r, "class_key": class_key(r), "class_id": None,
              "objects": [{"segmentation": a["segmentation"], "score": 1.0, "category_id": a["category_id"]}
                          for a in r["annotations"]]}
             for r in catalog.load(dataset, project_root()) if r["annotations"]]
    model = build_model(cfg.model).eval().to(device_of(cfg))
    sink = _Collector()
    _group_shard(cfg.stage, model, items, sink, torch.Generator().manual_seed(cfg.seed), device_of(cfg),
                 cfg.data.num_workers)
    predictions = [{"image_id": r["image_id"], "segmentation": part["segmentation"], "label": part["cluster"], "score": 1.0}
                   for r in sink.records for obj in r["objects"] for part in obj["parts"]]
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "grouping_predictions.json", predictions)
    results = evaluate_saved(dataset, out / "grouping_predictions.json", out, min_gt_iou=ev.min_gt_iou,
                             overlays=ev.overlays, root=project_root(), extra={"suite": suite, "stage": STAGE})
    shown = ", ".join(f"{k} {results[k]:.2f}" for k in results if k.startswith("AR") and results[k] is not None)
    print(f"{STAGE} evaluation on {dataset}: {shown} ({len(sink.skipped)} objects skipped) -> {out}/metrics.json")
    return {k: v for k, v in results.items() if k.startswith("AR")}
