"""Pixel grouping recovers parts that differ in feature space; objects too small are left out."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from partdistill.models.grouping import GroupingParams, feature_grid_mask, group_objects


def planted(seed=0, dim=32, grid=(12, 16), stride=8):
    """Features of one image: an object of three horizontal bands, each with its own feature vector."""
    rng = np.random.default_rng(seed)
    hf, wf = grid
    band = np.full(grid, -1)
    band[2:5, 3:13], band[5:8, 3:13], band[8:11, 3:13] = 0, 1, 2
    prototypes = rng.normal(0, 1, size=(3, dim)) * 3
    feats = rng.normal(0, 0.3, size=(dim, hf, wf))
    for p in range(3):
        feats[:, band == p] += prototypes[p][:, None]
    full = np.kron(band, np.ones((stride, stride), int))  # the parts at the input resolution
    return torch.tensor(feats[None], dtype=torch.float32), full


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_grouping_recovers_planted_parts(metric):
    features, parts = planted()
    mask = parts >= 0
    size = parts.shape
    (labels,) = group_objects(features, [(0, mask)], [size], [size], size,
                              GroupingParams(k=3, metric=metric, init="k-means++"), torch.Generator().manual_seed(0))
    assert (labels >= 0).sum() == mask.sum() and (labels[~mask] == -1).all()
    for p in range(3):  # each planted part is (almost) one cluster
        cluster = np.bincount(labels[parts == p]).argmax()
        predicted = labels == cluster
        iou = (predicted & (parts == p)).sum() / (predicted | (parts == p)).sum()
        assert iou > 0.9, (p, iou)


def test_assignment_at_the_original_resolution():
    features, parts = planted(seed=1)
    mask = parts >= 0
    original = (parts.shape[0] * 2, parts.shape[1] * 2)  # the image was shrunk to fit the input
    big_mask = np.kron(mask, np.ones((2, 2), bool))
    (labels,) = group_objects(features, [(0, big_mask)], [parts.shape], [original], parts.shape,
                              GroupingParams(k=3), torch.Generator().manual_seed(0))
    assert labels.shape == original and ((labels >= 0) == big_mask).all()
    assert len(np.unique(labels[big_mask])) == 3


def test_objects_with_too_few_feature_pixels_are_skipped():
    features, parts = planted()
    tiny = np.zeros(parts.shape, bool)
    tiny[20:28, 30:46] = True  # 2 feature pixels, k = 3
    out = group_objects(features, [(0, tiny), (0, parts >= 0)], [parts.shape], [parts.shape], parts.shape,
                        GroupingParams(k=3), torch.Generator().manual_seed(0))
    assert out[0] is None and out[1] is not None


def test_feature_grid_mask_follows_the_padding():
    mask = np.ones((40, 60), bool)
    grid = feature_grid_mask(mask, input_size=(40, 60), padded=(64, 64), grid=(8, 8))
    assert grid[:5, :7].all() and not grid[5:].any() and not grid[:, 8:].any()
