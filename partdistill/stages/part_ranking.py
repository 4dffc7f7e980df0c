"""Stage 4 `part_ranking`: part proposals labelled with per-class clusters of their query features.

Each partition (whole object classes of `data.train`, as pixel_grouping splits them) runs the
paper's two passes over the images of its classes in the `pixel_grouping` store, with the
class-agnostic proposal model of `proposal_learning`:

1. cluster: the top `stage.detections_per_image` queries by P(part); unique per-pixel assignment
   (argmax_q score_q * sigmoid(mask_q) where the best logit is > 0); area (relative to that
   foreground) and score filters `min_area_ratio_1` / `min_score_1`, each applied only if some part
   survives it; the parts cut to the object mask (the union of the object's grouped parts) with
   IoU > `min_object_iou`. Their query features are gathered per object class and clustered into
   `stage.num_clusters` by the project's k-means, all classes of the partition in one batched call.
2. label: the centroids classify every query (`stage.classifier_metric`); the top
   `detections_per_image` (query, cluster) pairs by P(part) x softmax; unique assignment inside the
   object; queries of one cluster merged (score = max); filters `min_area_ratio_2` / `min_score_2`
   and the IoU filter. Each image becomes one store record with its objects' labelled parts.

The query feature is the last decoder layer's query embedding after the decoder's final LayerNorm
(256-d in the paper's model), as the paper's `decoder_output`; transformers' output
`transformer_decoder_last_hidden_state` is taken *before* that LayerNorm, so it is applied here
(`models.ranking.query_features`). L2-normalised when `stage.feature_norm`.

Choices: a class with no more features than clusters is not clustered (the paper gives it random
centroids, i.e. random labels); its images are skipped, named in the shard manifest and counted.
Masks are computed at each image's original size (the paper: at the 640 input). The "l2" classifier
is the nearest-centroid one of `kmeans.assignment_logits` (the paper's `x.c - |x|^2 - |c|^2` lacks
the factor 2 on x.c, so its argmax is not the nearest centroid). The model runs twice per image
(once per pass), as in the paper, rather than keeping every image's mask logits between the passes.

Records: the upstream keys (image_id, file_name, height, width, class_key, class_id) and `objects`:
[{segmentation, category_id, object_ratio, parts: [{segmentation, label, score, ratio}]}]; arrays
`centroids` [C, K, D] float32, `centroid_classes` [C] str, `feature_counts` [C] int64.

    python launch.py experiment=smoke stage=part_ranking
    python launch.py -m hydra/launcher=slurm experiment=paper stage=part_ranking stage.partition=all
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from partdistill.data import catalog, masks
from partdistill.data.images import image_loader
from partdistill.models.weights import load_model_file, resolve_model_file
from partdistill.errors import UserError
from partdistill.models import ranking
from partdistill.models.inputs import preprocess
from partdistill.models.mask2former import build_model
from partdistill.models.outputs import image_logits
from partdistill.paths import project_root
from partdistill.stages.common import (
    complete_upstream,
    device_of,
    model_identity,
    print_summary,
    run_partitions,
)
from partdistill.store import Store, class_key

STAGE = "part_ranking"
UPSTREAM = "pixel_grouping"
PROPOSALS = "proposal_learning"
RECORD_KEYS = ("image_id", "file_name", "height", "width", "class_key", "class_id")


# ---------------------------------------------------------------------------------------------
# the proposal model


def proposal_weights(cfg: DictConfig) -> tuple[Path, int | None]:
    """The proposal model's weights file and its iteration: `model.weights` (file, checkpoints folder or
    run folder) when set, else the newest checkpoint of run_dir/proposal_learning."""
    if cfg.model.weights:
        path = resolve_model_file(Path(cfg.model.weights).expanduser())
    else:
        folder = Path(cfg.run_dir) / PROPOSALS
        try:
            path = resolve_model_file(folder)
        except UserError:
            raise UserError(
                f"{STAGE}: no proposal model checkpoint in {folder}. Train it first with "
                f"`python launch.py ... stage={PROPOSALS} run_dir={cfg.run_dir}` (the same experiment and data), "
                f"or give one with model.weights=<checkpoint file, checkpoints folder or run folder>") from None
    return path, _iteration(path)


def _iteration(path: Path) -> int | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            value = (f.metadata() or {}).get("iteration")
    except Exception:  # noqa: BLE001 - not ours to judge here; loading the file reports what is wrong
        return None
    return int(value) if value is not None and value.isdigit() else None


def load_proposal_model(cfg: DictConfig, weights: Path):
    """The one-class proposal Mask2Former of `cfg.model` with `weights` loaded (once)."""
    options = OmegaConf.to_container(cfg.model, resolve=True)
    options["weights"] = None  # loaded below, from the file the store identity names
    model = build_model(options, num_labels=1)
    try:
        load_model_file(model, weights)
    except RuntimeError as exc:
        head = Path(cfg.run_dir) / PROPOSALS / "head.json"
        raise UserError(f"{weights}: does not fit model={cfg.model.name} with one class "
                        f"({str(exc).splitlines()[0]}); use the model config the proposal model was trained "
                        f"with{f' (see {head})' if head.is_file() else ''}") from exc
    return model


def identity(cfg: DictConfig, upstream_hash: str, weights: Path, iteration: int | None) -> dict:
    s, run_dir = cfg.stage, Path(cfg.run_dir)
    shown = weights.relative_to(run_dir) if weights.is_relative_to(run_dir) else weights.resolve()
    return {
        "stage": STAGE, "data": cfg.data.train, "pixel_grouping": upstream_hash, "model": model_identity(cfg),
        "proposal_weights": str(shown), "proposal_iteration": iteration, "image_size": s.image_size,
        "num_clusters": s.num_clusters, "detections_per_image": s.detections_per_image,
        "min_score_1": s.min_score_1, "min_area_ratio_1": s.min_area_ratio_1, "min_score_2": s.min_score_2,
        "min_area_ratio_2": s.min_area_ratio_2, "min_object_iou": s.min_object_iou,
        "classifier_metric": s.classifier_metric.value, "feature_norm": s.feature_norm,
        "kmeans": {"iters": s.kmeans_iters, "tol": s.kmeans_tol, "n_init": s.kmeans_n_init}, "kmeans_seed": cfg.seed,
    }


# ---------------------------------------------------------------------------------------------
# one shard


def _forward(s: DictConfig, model, items: list[dict], desc: str, device: torch.device, workers: int | None):
    """(readable samples, skipped samples, Batch, outputs, features [B, Q, D], P(part) [B, Q]) per batch."""
    loader = image_loader(items, s.batch_size, workers)
    for readable, skipped in tqdm(loader, desc=desc, unit="batch", disable=None):
        if not readable:
            yield readable, skipped, None, None, None, None
            continue
        batch = preprocess([sample["image"] for sample in readable], size=s.image_size, device=device)
        with torch.no_grad():
            outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
            features = ranking.query_features(model, outputs).float()
        if s.feature_norm:
            features = torch.nn.functional.normalize(features, dim=-1)
        yield readable, skipped, batch, outputs, features, ranking.foreground_probs(outputs.class_queries_logits)


def _object_masks(record: dict, size: tuple[int, int], device) -> tuple[list[dict], torch.Tensor] | None:
    """The record's objects with parts and their masks [O, H, W] (the union of each one's grouped parts),
    or None when the masks do not have the image's size."""
    objects = [obj for obj in record["objects"] if obj["parts"]]
    stack = [np.logical_or.reduce([masks.decode(p["segmentation"]) for p in obj["parts"]]) for obj in objects]
    if any(m.shape != tuple(size) for m in stack):
        return None
    return objects, torch.from_numpy(np.stack(stack) if stack else np.zeros((0, *size), bool)).to(device)


def _logits(outputs, batch, b: int, queries: torch.Tensor) -> torch.Tensor:
    return image_logits(outputs.masks_queries_logits[b, queries], batch.pixel_values.shape[-2:],
                        batch.image_sizes[b], batch.original_sizes[b])


def _cluster_features(s: DictConfig, model, items: list[dict], counts: Counter, device: torch.device,
                      workers: int | None) -> dict[str, list[torch.Tensor]]:
    filters = ranking.Filters(s.min_area_ratio_1, s.min_score_1, s.min_object_iou)
    features: dict[str, list[torch.Tensor]] = {item["class_key"]: [] for item in items}
    for readable, _, batch, outputs, feats, fg in _forward(s, model, items, "part ranking: cluster pass",
                                                           device, workers):
        for b, sample in enumerate(readable):
            found = _object_masks(sample["record"], batch.original_sizes[b], feats.device)
            if found is None or not found[0]:
                continue
            scores, top = fg[b].topk(min(s.detections_per_image, fg.shape[1]))
            for kept in ranking.cluster_pass(_logits(outputs, batch, b, top), scores, found[1], filters):
                features[sample["record"]["class_key"]].append(feats[b, top[kept]].cpu())
                counts["features"] += len(kept)
    return features


def _labelled_record(record: dict, objects: list[dict], object_masks: torch.Tensor, logits, labels, scores,
                     k: int, filters) -> dict | None:
    height, width = object_masks.shape[1:]
    out = []
    for obj, mask in zip(objects, object_masks):
        parts = ranking.label_parts(logits, labels, scores, mask, k, filters)
        if not len(parts.labels):
            continue
        label_map = parts.label_map.cpu().numpy()
        out.append({
            "segmentation": masks.encode(mask.cpu().numpy()), "category_id": obj["category_id"],
            "object_ratio": float(mask.sum()) / (height * width),
            "parts": [{"segmentation": masks.encode(label_map == label), "label": label, "score": score,
                       "ratio": area / (height * width)}
                      for label, score, area in zip(parts.labels.tolist(), parts.scores.tolist(), parts.areas.tolist())],
        })
    return {key: record[key] for key in RECORD_KEYS} | {"objects": out} if out else None


def _rank_shard(s: DictConfig, model, items: list[dict], shard, generator: torch.Generator, device: torch.device,
                workers: int | None) -> Counter:
    """Clusters each class's proposal features of `items` and labels their proposals into `shard`."""
    counts = Counter()
    features = _cluster_features(s, model, items, counts, device, workers)
    dim = model.config.hidden_dim
    clusters = ranking.cluster_classes({c: torch.cat(f) if f else torch.zeros(0, dim) for c, f in features.items()},
                                       s.num_clusters, dim, iters=s.kmeans_iters, tol=s.kmeans_tol,
                                       n_init=s.kmeans_n_init, generator=generator, device=device)
    shard.add_array("centroids", clusters.centroids.numpy().astype(np.float32))
    shard.add_array("centroid_classes", np.array(clusters.classes, dtype=str))
    shard.add_array("feature_counts", np.array(clusters.counts, dtype=np.int64))
    counts.update(classes=len(clusters.classes), classes_too_few_features=len(clusters.too_few))
    labelled = []
    for item in items:
        n = clusters.too_few.get(item["class_key"])
        if n is None:
            labelled.append(item)
            continue
        shard.skip(item["file_name"], f"class {item['class_key']} has {n} part feature(s), not more than "
                                      f"stage.num_clusters={s.num_clusters}: not clustered")
        counts["skipped"] += 1
    filters = ranking.Filters(s.min_area_ratio_2, s.min_score_2, s.min_object_iou)
    centroids = dict(zip(clusters.classes, clusters.centroids.to(device)))
    passes = _forward(s, model, labelled, "part ranking: label pass", device, workers)
    for readable, skipped, batch, outputs, feats, fg in passes:
        for sample in skipped:
            shard.skip(sample["record"]["file_name"], sample["skipped"])
            counts["skipped"] += 1
        for b, sample in enumerate(readable):
            record = sample["record"]
            found = _object_masks(record, batch.original_sizes[b], device)
            if found is None:
                shard.skip(record["file_name"], "its pixel_grouping masks do not have the image's size")
                counts["skipped"] += 1
                continue
            probs = ranking.classify(feats[b], centroids[record["class_key"]], s.classifier_metric.value)
            queries, labels, scores = ranking.select_pairs(fg[b], probs, s.detections_per_image)
            out = _labelled_record(record, *found, _logits(outputs, batch, b, queries), labels, scores,
                                   s.num_clusters, filters)
            if out is None:
                shard.skip(record["file_name"], "no part passed the label pass's filters")
                counts["skipped"] += 1
                continue
            shard.add(out)
            counts.update(images=1, objects=len(out["objects"]), parts=sum(len(o["parts"]) for o in out["objects"]))
    return counts


# ---------------------------------------------------------------------------------------------
# the stage


def run(cfg: DictConfig) -> dict:
    s, device = cfg.stage, device_of(cfg)
    store_root = Path(cfg.run_dir) / "store"
    upstream = complete_upstream(store_root, UPSTREAM, STAGE)
    weights, iteration = proposal_weights(cfg)
    store = Store(store_root, STAGE, s.num_partitions, identity(cfg, upstream.hash, weights, iteration))
    loaded = []  # the model is loaded once, and only if some partition is still to be written

    def write(index: int, part: list[dict], shard) -> Counter:
        if not loaded:
            loaded.append(load_proposal_model(cfg, weights).eval().to(device))
        items = list(upstream.records(classes={class_key(r) for r in part}))
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + index)  # the same on reruns
        return _rank_shard(s, loaded[0], items, shard, generator, device, cfg.data.num_workers)

    result = {"images": 0, "objects": 0, "parts": 0, "classes": 0, "classes_too_few_features": 0, "skipped": 0,
              **run_partitions(store, s, catalog.load(cfg.data.train, project_root()), write)}
    print_summary(store, result, f"{result['images']} images, {result['objects']} objects, {result['parts']} parts "
                                 f"labelled in {result['classes']} classes; {result['classes_too_few_features']} "
                                 f"classes with too few features, {result['skipped']} images skipped", s,
                  f"no proposal was labelled: the proposals must pass stage.min_score_1={s.min_score_1} and "
                  f"stage.min_area_ratio_1={s.min_area_ratio_1} to be clustered and stage.min_score_2={s.min_score_2}"
                  f" and stage.min_area_ratio_2={s.min_area_ratio_2} to be labelled, and a class needs at least "
                  f"stage.num_clusters={s.num_clusters} of them ({result['classes_too_few_features']} classes had "
                  "fewer): lower these, or train the proposal model longer")
    return result
