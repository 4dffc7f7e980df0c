"""Pixel grouping: k-means over backbone features inside each object, every object pixel assigned.

The paper clusters the feature vectors of the object's pixels on the 1/8 feature grid (the mask is
downsampled by nearest neighbour) and then gives every pixel of the object, at the original image
resolution, to a centroid. Its assignment upsamples the features (to the padded input, crop, then
to the original size, bilinear); here the K assignment logits are upsampled instead, which is the
same because bilinear interpolation is linear in the features and the logits are linear in them
(dot: f.c; l2: 2 f.c - |c|^2, the |f|^2 term being the same for every centroid). That keeps memory
at K maps instead of D feature maps at full resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from partdistill.models.kmeans import assignment_logits, kmeans
from partdistill.models.outputs import image_logits


@dataclass
class GroupingParams:
    k: int = 4
    metric: str = "dot"
    iters: int = 20
    tol: float = 1e-4
    init: str = "k-means++"
    n_init: int = 1


def feature_grid_mask(mask: np.ndarray, input_size: tuple[int, int], padded: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """An object mask at the original size -> [Hf, Wf] bool on the feature grid of the padded input."""
    m = torch.from_numpy(mask)[None, None].float()
    m = F.interpolate(m, size=input_size, mode="nearest")
    m = F.pad(m, (0, padded[1] - input_size[1], 0, padded[0] - input_size[0]))
    return F.interpolate(m, size=grid, mode="nearest")[0, 0] > 0.5


def group_objects(
    features: torch.Tensor,
    objects: list[tuple[int, np.ndarray]],
    input_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    padded: tuple[int, int],
    params: GroupingParams,
    generator: torch.Generator | None = None,
) -> list[np.ndarray | None]:
    """Part label maps of a batch's objects.

    Args:
        features: [B, D, Hf, Wf] features of the padded batch (Hf, Wf = padded size / stride).
        objects: (image index in the batch, [H, W] bool object mask at the original size) per object.
        input_sizes: the resized (valid) size of each image inside the padded input.
        original_sizes: each image's original (H, W).
        padded: the (Hp, Wp) of the padded input batch.
        params: k-means and assignment settings.

    Returns:
        Per object an [H, W] int64 map (cluster id inside the object, -1 outside), or None when the
        object has no more feature pixels than clusters (it cannot be grouped; the caller counts it).
    """
    _, dim, hf, wf = features.shape
    grid_masks = [feature_grid_mask(m, input_sizes[b], padded, (hf, wf)) for b, m in objects]
    counts = [int(g.sum()) for g in grid_masks]
    keep = [i for i, n in enumerate(counts) if n > params.k]
    out: list[np.ndarray | None] = [None] * len(objects)
    if not keep:
        return out
    n_max = max(counts[i] for i in keep)
    points = features.new_zeros((len(keep), n_max, dim))  # [O, N, D], padded
    valid = torch.zeros((len(keep), n_max), dtype=torch.bool, device=features.device)
    for row, i in enumerate(keep):
        b = objects[i][0]
        pts = features[b][:, grid_masks[i].to(features.device)].T  # [n, D]
        points[row, : len(pts)] = pts
        valid[row, : len(pts)] = True
    result = kmeans(points, valid, k=params.k, iters=params.iters, tol=params.tol, init=params.init,
                    n_init=params.n_init, generator=generator)
    for row, i in enumerate(keep):
        b, mask = objects[i]
        logits = assignment_logits(features[b].permute(1, 2, 0), result.centroids[row], params.metric)  # [Hf, Wf, K]
        logits = image_logits(logits.permute(2, 0, 1), padded, input_sizes[b], original_sizes[b])  # [K, H, W]
        labels = logits.argmax(dim=0).cpu().numpy()
        out[i] = np.where(mask, labels, -1)
    return out

