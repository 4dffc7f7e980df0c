"""Part ranking's tensor work: query features, the unique per-pixel assignment and its filters, the
per-class k-means of query features and the centroid classifier (`stages/part_ranking.py` runs them).

Everything here follows the paper's `part_ranking_model.py` (method reference 2.4), vectorised:
the per-pixel winner map is one argmax over queries, part areas and object overlaps are bincounts
of it, and merging queries by cluster label is a gather plus a scatter-max.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from partdistill.models.kmeans import assignment_logits, kmeans


@dataclass
class Filters:
    """The paper's part filters: area / foreground-map area > min_area_ratio, score > min_score, and
    IoU with the object mask > min_object_iou (the paper's `fg_score_threshold`, 0.001)."""

    min_area_ratio: float = 0.0
    min_score: float = 0.0
    min_object_iou: float = 0.001


# ---------------------------------------------------------------------------------------------
# Model outputs


def query_features(model, outputs) -> Tensor:
    """[B, Q, D] query embeddings of the last decoder layer after the decoder's final LayerNorm.

    This is detectron2 Mask2Former's `decoder_norm(output)` of the last layer, the input of its class
    and mask heads, which the paper takes as `outputs["decoder_output"]`. transformers returns the
    last layer's output *before* that LayerNorm as `transformer_decoder_last_hidden_state` (the
    normed ones are `transformer_decoder_intermediate_states`, which Mask2FormerForUniversalSegmentation
    does not return), so the decoder's own `layernorm` is applied here.
    """
    decoder = model.model.transformer_module.decoder
    return decoder.layernorm(outputs.transformer_decoder_last_hidden_state)


def foreground_probs(class_logits: Tensor) -> Tensor:
    """[..., Q, C+1] class logits -> [..., Q] P(not no-object) (with one class: P(part))."""
    return 1.0 - class_logits.float().softmax(-1)[..., -1]


# ---------------------------------------------------------------------------------------------
# Unique per-pixel assignment and filters


def unique_assignment(logits: Tensor, scores: Tensor, valid: Tensor | None = None) -> Tensor:
    """[H, W] index of the winning mask per pixel, argmax_n scores_n * sigmoid(logits_n), on the pixels
    where the largest logit is > 0 (and `valid`), -1 elsewhere. logits [N, H, W], scores [N]."""
    if len(logits) == 0:
        return torch.full(logits.shape[1:], -1, dtype=torch.int64, device=logits.device)
    foreground = logits.amax(0) > 0
    if valid is not None:
        foreground &= valid
    winner = (scores[:, None, None] * logits.sigmoid()).argmax(0)
    return torch.where(foreground, winner, -1)


def areas_of(index_map: Tensor, n: int) -> Tensor:
    """[n] pixel counts of the ids 0..n-1 in an id map (-1 = none)."""
    ids = index_map[index_map >= 0]
    return torch.bincount(ids, minlength=n)[:n]


def filter_parts(areas: Tensor, scores: Tensor, foreground_area: int, min_area_ratio: float,
                 min_score: float) -> Tensor:
    """[N] bool: the parts (those with pixels) kept by the paper's two filters, applied in order,
    each only if at least one part survives it: area / foreground_area > min_area_ratio, then
    score > min_score."""
    keep = areas > 0
    by_area = keep & (areas.float() / max(foreground_area, 1) > min_area_ratio)
    if bool(by_area.any()):
        keep = by_area
    by_score = keep & (scores > min_score)
    if bool(by_score.any()):
        keep = by_score
    return keep


def cluster_pass(logits: Tensor, scores: Tensor, object_masks: Tensor, filters: Filters) -> list[Tensor]:
    """The parts of one image whose features are clustered, per object: indices into the N masks.

    logits [N, H, W] and scores [N] of the image's top queries; object_masks [O, H, W] bool. The
    unique assignment runs over the whole image (foreground = max logit > 0), the area ratio is
    relative to that foreground, the filters apply, then each part is cut to each object mask and
    kept if its IoU with it (intersection / object area) exceeds `filters.min_object_iou`.
    """
    n = len(scores)
    winner = unique_assignment(logits, scores)
    foreground = winner >= 0
    keep = filter_parts(areas_of(winner, n), scores, int(foreground.sum()), filters.min_area_ratio,
                        filters.min_score)
    objects = object_masks & foreground  # [O, H, W]
    flat = (torch.arange(len(object_masks), device=winner.device)[:, None, None] * n + winner)[objects]
    inside = torch.bincount(flat, minlength=len(object_masks) * n).view(len(object_masks), n)  # [O, N]
    object_area = object_masks.flatten(1).sum(1).clamp(min=1)
    passes = keep[None] & (inside.float() / object_area[:, None] > filters.min_object_iou)
    return [row.nonzero()[:, 0] for row in passes]


@dataclass
class LabelledParts:
    """One object's labelled parts: `label_map` [H, W] cluster id per pixel (-1 = none), and per kept
    part its cluster `labels` [P], `scores` [P] and pixel `areas` [P] (in label order)."""

    label_map: Tensor
    labels: Tensor
    scores: Tensor
    areas: Tensor


def select_pairs(fg_probs: Tensor, class_probs: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The label pass's candidates: of the top_k (query, cluster) pairs by P(fg) x P(cluster | query),
    each query's best one -> (queries [M], labels [M], scores [M]), best first.

    fg_probs [Q], class_probs [Q, K]. A query's other pairs could never win a pixel in the unique
    assignment (same mask, lower score), so dropping them changes nothing but the work.
    """
    num_queries, k = class_probs.shape
    pair_scores = (fg_probs[:, None] * class_probs).flatten()
    top, index = pair_scores.topk(min(top_k, len(pair_scores)))  # sorted: a query's first pair is its best
    query, label = index // k, index % k
    order = torch.arange(len(query), device=query.device)
    first = torch.full((num_queries,), len(query), device=query.device).scatter_reduce(0, query, order, "amin")
    best = first[query] == order
    return query[best], label[best], top[best]


def label_parts(logits: Tensor, labels: Tensor, scores: Tensor, object_mask: Tensor, k: int,
                filters: Filters) -> LabelledParts:
    """Cluster-labelled parts of one object from the candidates of `select_pairs`.

    logits [M, H, W], labels [M] in 0..k-1, scores [M], object_mask [H, W] bool. The unique assignment
    runs inside the object (the paper multiplies the logits by the object mask); candidates with
    the same label merge (union of their pixels, score = max over those that won pixels); the
    filters follow, area ratios relative to the assigned pixels, and IoU with the object mask.
    """
    winner = unique_assignment(logits, scores, object_mask)
    label_map = torch.where(winner >= 0, labels[winner.clamp(min=0)], -1)
    areas = areas_of(label_map, k)
    won = areas_of(winner, len(labels)) > 0
    merged = torch.zeros(k, device=scores.device).scatter_reduce(0, labels[won], scores[won].float(), "amax",
                                                                 include_self=False)
    keep = filter_parts(areas, merged, int((winner >= 0).sum()), filters.min_area_ratio, filters.min_score)
    keep &= areas.float() / max(int(object_mask.sum()), 1) > filters.min_object_iou
    label_map = torch.where(keep[label_map.clamp(min=0)] & (label_map >= 0), label_map, -1)
    kept = keep.nonzero()[:, 0]
    return LabelledParts(label_map, kept, merged[kept], areas[kept])


# ---------------------------------------------------------------------------------------------
# Clustering and classification


@dataclass
class ClassClusters:
    """Per-class k-means: the classes clustered (sorted), their centroids [C, K, D] and feature counts,
    and the classes that had too few features (<= K), which get no centroids."""

    classes: list[str]
    centroids: Tensor
    counts: list[int]
    too_few: dict[str, int]


def cluster_classes(features: dict[str, Tensor], k: int, dim: int, iters: int = 300, tol: float = 1e-4,
                    n_init: int = 10, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu", max_elements: int = 2**27) -> ClassClusters:
    """K-means of each class's features [n_c, D] into k clusters, classes batched together.

    A class with n_c <= k features (the paper's rule, which gives such classes random centroids) is
    not clustered: k-means of that few points says nothing about part types. It is listed in
    `too_few` and the stage labels none of its images. Classes go to the batched k-means in groups of
    similar size (largest first) holding at most `max_elements` padded feature values each (2^27:
    512 MiB of float32 points), so padding stays small and memory bounded however many classes a
    partition holds. `generator` must live on `device`.
    """
    eligible = sorted(c for c, f in features.items() if len(f) > k)
    too_few = {c: len(features[c]) for c in sorted(features) if c not in eligible}
    centroids = torch.zeros(len(eligible), k, dim)
    row_of = {c: row for row, c in enumerate(eligible)}
    for group in _size_groups(eligible, features, dim, max_elements):
        counts = [len(features[c]) for c in group]
        points = torch.zeros(len(group), max(counts), dim, device=device)
        valid = torch.zeros(len(group), max(counts), dtype=torch.bool, device=device)
        for row, c in enumerate(group):
            points[row, : counts[row]] = features[c].to(device=device, dtype=torch.float32)
            valid[row, : counts[row]] = True
        result = kmeans(points, valid, k=k, iters=iters, tol=tol, init="k-means++", n_init=n_init,
                        generator=generator)
        centroids[[row_of[c] for c in group]] = result.centroids.cpu()
    return ClassClusters(eligible, centroids, [len(features[c]) for c in eligible], too_few)


def _size_groups(classes: list[str], features: dict[str, Tensor], dim: int, max_elements: int) -> list[list[str]]:
    """`classes` by decreasing feature count, cut into groups whose padded size (classes x largest
    count x dim) stays within `max_elements` (a class larger than that forms a group of its own)."""
    groups: list[list[str]] = []
    for c in sorted(classes, key=lambda c: -len(features[c])):
        if groups and (len(groups[-1]) + 1) * len(features[groups[-1][0]]) * dim <= max_elements:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def classify(features: Tensor, centroids: Tensor, metric: str) -> Tensor:
    """[N, K] softmax over the centroids of `assignment_logits` (metric "l2": nearest-centroid logits
    2 f.c - |c|^2, "dot": f.c), the centroids used as a linear classifier."""
    return assignment_logits(features.float(), centroids.float(), metric).softmax(-1)
