"""Batched k-means (Lloyd) in torch, and centroid assignment by "dot" or "l2".

One implementation serves pixel grouping (K=4 over ~2,000 backbone features per object, hundreds of
objects at once) and part ranking (K=8 per object class over query features). Every problem of a
batch, and every one of the `n_init` restarts, runs at once on the device of the points: the restarts
sit side by side along the centroid axis, so one pass over the points serves all of them.

Each run follows scikit-learn's Lloyd loop (`KMeans(algorithm="lloyd")`, which the paper's scripts
call): assign, average, relocate empty clusters to the farthest points, stop on unchanged labels or
when the centroid shift is within `tol` times the data's mean variance, then a last assignment so
the labels match the returned centroids. With the same initial centroids it gives scikit-learn's
partition and inertia (tests/test_kmeans.py). Differences: the k-means++ seeding is the classic D^2
sampling (scikit-learn's is greedy, with 2 + log k trials per centroid), so seeds differ for the
same random state; and a cluster left empty with nothing to relocate keeps its previous centroid.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class KMeansResult(NamedTuple):
    centroids: Tensor  # [B, k, D], dtype of the points
    labels: Tensor  # [B, N] int64, -1 at invalid points
    inertia: Tensor  # [B] float32 (float64 for float64 points): sum of squared distances to the own centroid
    iterations: int  # Lloyd iterations run (the most any problem of the batch needed)


def kmeans(
    points: Tensor,
    valid: Tensor | None = None,
    k: int = 4,
    iters: int = 20,
    tol: float = 1e-4,
    init: str | Tensor = "k-means++",
    n_init: int = 1,
    generator: torch.Generator | None = None,
) -> KMeansResult:
    """Cluster each of B point sets into k clusters.

    points: [B, N, D]; padded entries must be finite (they are masked out, never read as data).
    valid: [B, N] bool, which points belong to each problem (None: all).
    iters: at most this many Lloyd iterations. tol: scikit-learn's; a run stops when the squared
        centroid shift, summed over its centroids, is <= tol * the mean over dimensions of the
        variance of its valid points (0: only on unchanged labels).
    init: "k-means++" (D^2 sampling from `generator`, which must be on the points' device),
        "first" (k evenly spaced valid points in order: deterministic), or a [B, k, D] tensor of
        initial centroids. The last two need n_init=1.
    n_init: independent k-means++ runs; each problem keeps the one with the lowest inertia.

    Arithmetic is float32 (float64 for float64 points; half inputs are upcast, a copy); centroids are
    returned in the points' dtype. Problems with fewer valid points than k do not fail: the seeds
    repeat points, a duplicated seed never gets a point (ties go to the lowest cluster index) and
    keeps its centroid, so centroids may repeat and some labels go unused; the inertia is 0. A
    problem with no valid point gets zero centroids, labels -1 and inertia 0.
    """
    if points.dim() != 3:
        raise ValueError(f"points must be [B, N, D], got {tuple(points.shape)}")
    given = isinstance(init, Tensor)
    if not given and init not in ("k-means++", "first"):
        raise ValueError(f"init must be 'k-means++', 'first' or a tensor, got {init!r}")
    if n_init < 1 or (n_init > 1 and (given or init == "first")):
        raise ValueError(f"n_init={n_init} needs init='k-means++' (the other inits are deterministic)")
    B, N, D = points.shape
    dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    if N == 0:  # no point to seed from anywhere
        labels = torch.empty(B, 0, dtype=torch.int64, device=points.device)
        return KMeansResult(points.new_zeros(B, k, D), labels, torch.zeros(B, dtype=dtype, device=points.device), 0)
    x = points.to(dtype).contiguous()  # [B, N, D]; no copy for contiguous float32
    valid = torch.ones(B, N, dtype=torch.bool, device=x.device) if valid is None else valid.to(torch.bool)
    n = valid.sum(1)  # [B]
    w = valid.to(dtype)  # [B, N]
    xsq = torch.linalg.vector_norm(x, dim=-1).square()  # [B, N]; no [B, N, D] temporary
    # scikit-learn's tolerance: tol * mean over dimensions of the per-dimension variance
    mean = torch.bmm(w[:, None], x)[:, 0] / n.clamp(min=1)[:, None]  # [B, D]
    var = ((xsq * w).sum(1) / n.clamp(min=1) - mean.square().sum(1)).clamp(min=0) / D  # [B]

    R = n_init
    if given:
        centroids = init.to(device=x.device, dtype=dtype).reshape(B, 1, k, D)
    elif init == "first":
        order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # valid indices first, in order
        rank = (torch.arange(k, device=x.device) * n[:, None]) // k  # [B, k]
        centroids = _gather_rows(x, order.gather(1, rank.clamp(max=N - 1)))[:, None]
    else:
        centroids = _kmeans_pp(x, xsq, w, k, R, generator)
    centroids = centroids.reshape(B, R * k, D).contiguous()  # runs side by side: [B, R*k, D]

    iterations, centroids = _lloyd(x, xsq, w, n, (tol * var)[:, None], centroids, R, k, iters)
    labels, dist = _nearest(x, xsq, centroids, R, k)  # labels that match the returned centroids
    inertia = (dist * w[..., None]).sum(1)  # [B, R]

    best = inertia.argmin(1)  # [B]
    inertia = inertia.gather(1, best[:, None])[:, 0]
    labels = labels.gather(2, best[:, None, None].expand(B, N, 1))[..., 0].masked_fill(~valid, -1)
    centroids = centroids.view(B, R, k, D).gather(1, best[:, None, None, None].expand(B, 1, k, D))[:, 0]
    centroids = centroids.masked_fill((n == 0)[:, None, None], 0).to(points.dtype)
    return KMeansResult(centroids, labels, inertia, iterations)


def assignment_logits(features: Tensor, centroids: Tensor, metric: str) -> Tensor:
    """Scores of features [..., N, D] against centroids [..., k, D] -> [..., N, k].

    Leading dimensions broadcast as in torch.matmul: features [H, W, D] with centroids [k, D]
    gives [H, W, k]; [B, N, D] with [B, k, D] gives [B, N, k]; [B, H, W, D] needs [B, 1, k, D].
    - "dot": f.c_k, the paper's grouping scripts (DISTANCE_METRIC "dot"): dot products against the
      Euclidean k-means centroids, so the argmax is NOT the nearest centroid (longer centroids win).
    - "l2": 2 f.c_k - |c_k|^2 = |f|^2 - |f - c_k|^2: the argmax is the nearest centroid. The paper's
      "l2" also subtracts |f|^2, the same for every k: neither argmax nor softmax over k changes.
    Both are affine in f with weights independent of f, so upsampling the logits bilinearly equals
    computing them on bilinearly upsampled features (the interpolation weights sum to 1).
    """
    if metric == "dot":
        return torch.matmul(features, centroids.transpose(-1, -2))
    if metric == "l2":
        return torch.matmul(features, 2 * centroids.transpose(-1, -2)) - centroids.square().sum(-1).unsqueeze(-2)
    raise ValueError(f"metric must be 'dot' or 'l2', got {metric!r}")


def assign(features: Tensor, centroids: Tensor, metric: str) -> Tensor:
    """argmax_k of `assignment_logits` -> [..., N] int64 cluster index (see there for the metrics)."""
    return assignment_logits(features, centroids, metric).argmax(-1)


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, D], index [B, M] -> x[b, index[b, m]] as [B, M, D]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _nearest(x: Tensor, xsq: Tensor, centroids: Tensor, R: int, k: int) -> tuple[Tensor, Tensor]:
    """Nearest centroid per run: labels [B, N, R] in 0..k-1 and squared distances [B, N, R].

    Maximises 2 x.c - |c|^2 (|x|^2 is the same for every c) as one baddbmm: scaling the small
    centroid matrix, never x, keeps x uncopied, and no [B, N, k, D] difference is formed.
    """
    B, N, _ = x.shape
    csq = centroids.square().sum(-1)  # [B, R*k]
    scores = torch.baddbmm(-csq[:, None, :], x, (2 * centroids).transpose(1, 2))  # [B, N, R*k]
    best, labels = scores.view(B, N, R, k).max(-1)
    return labels, (xsq[..., None] - best).clamp(min=0)


def _lloyd(
    x: Tensor, xsq: Tensor, w: Tensor, n: Tensor, tol: Tensor, centroids: Tensor, R: int, k: int, iters: int
) -> tuple[int, Tensor]:
    """scikit-learn's Lloyd loop for every (problem, run) at once -> (iterations, centroids [B, R*k, D]).

    A run that has converged keeps its centroids, as if it had stopped alone. Problems whose runs
    have all converged leave the working set once they are half of it (one copy of the rest of x),
    so that a few slow problems do not make every problem pay for their iterations. The cluster sums
    are computed once, then moved point by point (`_add_moves`), in the points' precision: the
    rounding that accumulates is of the order of the rounding of one full sum.
    """
    B, N, D = x.shape
    out = centroids.clone()
    active = torch.arange(B, device=x.device)  # problem index of each working row
    done = torch.zeros(B, R, dtype=torch.bool, device=x.device)
    labels_old = torch.full((B, N, R), -1, dtype=torch.int64, device=x.device)
    iterations = 0
    for iterations in range(1, iters + 1):
        labels, dist = _nearest(x, xsq, centroids, R, k)
        if iterations == 1:
            sums, counts = _sums(x, w, labels, R, k)
        else:
            _add_moves(sums, counts, x, w, labels, labels_old, R, k)
        new = _centroids(x, w, n, labels, dist, sums, counts, centroids, R, k)
        shift = (new - centroids).square().view(-1, R, k * D).sum(-1)  # [B, R]
        same = ((labels == labels_old) | (w == 0)[..., None]).all(1)  # [B, R]
        centroids = torch.where(done.repeat_interleave(k, 1)[..., None], centroids, new)
        done = done | same | (shift <= tol)
        labels_old = labels
        finished = done.all(1)  # [B]
        if bool(finished.all()):
            break
        if 2 * int(finished.sum()) >= len(active):
            out[active[finished]] = centroids[finished]
            keep = (~finished).nonzero()[:, 0]
            x, xsq, w, n, tol, centroids, done, labels_old, sums, counts, active = (
                t.index_select(0, keep) for t in (x, xsq, w, n, tol, centroids, done, labels_old, sums, counts, active)
            )
    out[active] = centroids
    return iterations, out


def _sums(x: Tensor, w: Tensor, labels: Tensor, R: int, k: int) -> tuple[Tensor, Tensor]:
    """Sum [B, R*k, D] and count [B, R*k] of the valid points of each cluster (labels [B, N, R])."""
    B, N, _ = x.shape
    onehot = torch.zeros(B, N, R, k, dtype=x.dtype, device=x.device)
    onehot.scatter_(-1, labels[..., None], w[:, :, None, None].expand(B, N, R, 1))
    onehot = onehot.view(B, N, R * k)
    return torch.bmm(onehot.transpose(1, 2), x), onehot.sum(1)


def _add_moves(
    sums: Tensor, counts: Tensor, x: Tensor, w: Tensor, labels: Tensor, labels_old: Tensor, R: int, k: int
) -> None:
    """Bring sums [B, R*k, D] and counts [B, R*k] from labels_old to labels [B, N, R], in place.

    Only the points that changed cluster are read: one sparse (+1 into the new cluster, -1 out of
    the old) by dense product. After the first iterations few points move, and this costs a small
    fraction of `_sums` (at 1% moved, 1/20 with k=4, R=10 on CPU).
    """
    B, N, D = x.shape
    moved = (labels != labels_old) & (w > 0)[..., None]  # [B, N, R]
    b, i, r = moved.nonzero(as_tuple=True)
    point, run = b * N + i, (b * R + r) * k  # row of x.view(B*N, D); first cluster of the run
    rows = torch.cat([run + labels[moved], run + labels_old[moved]])
    vals = torch.ones_like(rows, dtype=x.dtype)
    vals[len(point):] = -1
    index = torch.stack([rows, point.repeat(2)])
    delta = torch.sparse_coo_tensor(index, vals, (B * R * k, B * N), check_invariants=False)
    sums += torch.sparse.mm(delta, x.view(B * N, D)).view(B, R * k, D)
    counts.view(-1).index_add_(0, rows, vals)


def _centroids(
    x: Tensor, w: Tensor, n: Tensor, labels: Tensor, dist: Tensor, sums: Tensor, counts: Tensor, old: Tensor,
    R: int, k: int,
) -> Tensor:
    """New centroids [B, R*k, D]: the cluster means, after scikit-learn's relocation.

    Relocation: the j-th empty cluster of a run takes its j-th farthest valid point (from its own
    centroid), which leaves its former cluster; sums and counts stay those of the labels. Skipped
    where every point sits on its centroid (fewer distinct points than k), as scikit-learn does.
    A cluster still empty keeps `old`.
    """
    B, N, D = x.shape
    empty = (counts == 0).view(B, R, k)
    if bool(empty.any()):
        dist = dist.masked_fill((w == 0)[..., None], -1.0)  # [B, N, R]; invalid points never chosen
        far = dist.topk(min(k, N), dim=1).indices.transpose(1, 2)  # [B, R, k'] farthest first
        rank = empty.cumsum(-1) - 1  # [B, R, k]: rank of each empty cluster among its run's empties
        point = far.gather(2, rank.clamp(0, far.shape[-1] - 1))  # [B, R, k] point index in 0..N-1
        move = empty & (rank < n[:, None, None]) & (dist.amax(1) > 0)[..., None]  # [B, R, k]
        former = labels.transpose(1, 2).gather(2, point) + torch.arange(R, device=x.device)[:, None] * k
        moved = _gather_rows(x, point.view(B, R * k)) * move.view(B, R * k, 1)  # [B, R*k, D]
        sums = sums.scatter_add(1, former.view(B, R * k, 1).expand(-1, -1, D), -moved)
        counts = counts.scatter_add(1, former.view(B, R * k), -move.view(B, R * k).to(counts.dtype))
        sums = torch.where(move.view(B, R * k, 1), moved, sums)
        counts = torch.where(move.view(B, R * k), 1.0, counts)
    return torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], old)


def _kmeans_pp(x: Tensor, xsq: Tensor, w: Tensor, k: int, R: int, generator: torch.Generator | None) -> Tensor:
    """R independent k-means++ seedings per problem (classic D^2 sampling) -> [B, R, k, D].

    The first seed is uniform over the valid points, each next one drawn with probability
    proportional to the squared distance to the nearest seed so far. Where every valid point already
    coincides with a seed (fewer distinct points than k), the draw falls back to uniform.
    """
    B, N, D = x.shape
    uniform = w[:, None, :].expand(B, R, N)  # [B, R, N]
    # a problem without valid points draws from all of them: its result is discarded anyway
    uniform = torch.where(uniform.sum(-1, keepdim=True) > 0, uniform, torch.ones_like(uniform))
    seeds = [_gather_rows(x, _draw(uniform, generator))]  # [B, R, D] each
    d2 = None
    for _ in range(1, k):
        c = seeds[-1]
        # |x - c|^2 for every point and run at once: [B, R, N]
        d = torch.baddbmm(xsq[:, None, :] + c.square().sum(-1)[..., None], c, x.transpose(1, 2), alpha=-2).clamp(min=0)
        d2 = d if d2 is None else torch.minimum(d2, d)
        p = d2 * uniform
        p = torch.where(p.sum(-1, keepdim=True) > 0, p, uniform)
        seeds.append(_gather_rows(x, _draw(p, generator)))
    return torch.stack(seeds, 2)  # [B, R, k, D]


def _draw(p: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of p [..., N] (weights >= 0, positive sum), with probability p / sum -> [...].

    Inverse-CDF sampling (10x faster than torch.multinomial here). The uniform draw stays below the
    total, so the first index whose cumulative weight exceeds it always has a positive weight.
    """
    cdf = p.cumsum(-1)
    total = cdf[..., -1:]
    u = torch.rand(total.shape, generator=generator, device=p.device, dtype=p.dtype) * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)[..., 0]
