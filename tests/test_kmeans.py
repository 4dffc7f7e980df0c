"""Batched k-means against scikit-learn's KMeans (Lloyd), and the dot / l2 assignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from partdistill.models.kmeans import assign, assignment_logits, kmeans


@pytest.fixture(autouse=True)
def one_thread():
    """The problems here are tiny: with several threads they mostly wait for each other (and for
    whatever else runs on the machine), which made this file 2-3x slower on a loaded 2-core VM."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def blobs(n: int, std: float, seed: int, dim: int = 8, centers: int = 4, offset: float = 0.0) -> np.ndarray:
    x, _ = make_blobs(n, n_features=dim, centers=centers, cluster_std=std, center_box=(-10, 10), random_state=seed)
    return x + offset


def evenly_spaced(x: np.ndarray, k: int) -> np.ndarray:
    """What init="first" picks: k evenly spaced points."""
    return x[np.arange(k) * len(x) // k]


def sklearn_fit(x: np.ndarray, init: np.ndarray, iters: int = 300, tol: float = 1e-4) -> KMeans:
    return KMeans(len(init), init=init, n_init=1, max_iter=iters, tol=tol, algorithm="lloyd").fit(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "std, offset, tol",
    [(1.0, 0.0, 1e-4), (4.0, 0.0, 1e-4), (4.0, 50.0, 1e-4), (4.0, 0.0, 0.0)],
    ids=["separated", "overlapping", "overlapping-offset", "overlapping-tol0"],
)
def test_matches_sklearn_given_the_same_init(std, offset, tol, dtype):
    x = blobs(1500, std, seed=1, offset=offset)
    init = x[[3, 10, 700, 1400]]
    ref = sklearn_fit(x.astype(np.float32) if dtype == torch.float32 else x, init, tol=tol)
    got = kmeans(torch.tensor(x, dtype=dtype)[None], k=4, iters=300, tol=tol, init=torch.tensor(init)[None])
    assert got.inertia.item() == pytest.approx(ref.inertia_, rel=1e-4)
    assert adjusted_rand_score(ref.labels_, got.labels[0].numpy()) == 1.0
    np.testing.assert_allclose(got.centroids[0].numpy(), ref.cluster_centers_, rtol=1e-4, atol=1e-4)
    if dtype == torch.float64:  # float32 rounding may move the tol test by one iteration
        assert got.iterations == ref.n_iter_
    assert got.centroids.dtype == dtype and got.labels.dtype == torch.int64


def test_first_init_is_evenly_spaced_valid_points():
    x = blobs(1001, 4.0, seed=2)
    ref = sklearn_fit(x, evenly_spaced(x, 4))
    got = kmeans(torch.tensor(x)[None], k=4, iters=300, init="first")
    assert got.inertia.item() == pytest.approx(ref.inertia_, rel=1e-4)
    assert adjusted_rand_score(ref.labels_, got.labels[0].numpy()) == 1.0


def padded(problems: list[np.ndarray], garbage: float = 1e3, seed: int = 0):
    """Stack ragged problems into [B, N, D] with invalid points scattered among the valid ones."""
    rng = np.random.default_rng(seed)
    n = max(len(p) for p in problems) + 37
    points = torch.full((len(problems), n, problems[0].shape[1]), garbage, dtype=torch.float64)
    valid = torch.zeros(len(problems), n, dtype=torch.bool)
    for b, p in enumerate(problems):
        where = torch.from_numpy(np.sort(rng.choice(n, len(p), replace=False)))
        points[b, where] = torch.from_numpy(p)
        valid[b, where] = True
    return points, valid


PROBLEMS = [(300, 1.0, 0), (450, 4.0, 1), (120, 3.0, 2), (400, 6.0, 3)]  # (points, blob std, seed)


def test_batched_equals_one_problem_at_a_time():
    problems = [blobs(n, std, seed=s) for n, std, s in PROBLEMS]
    points, valid = padded(problems)
    batch = kmeans(points, valid, k=4, iters=300, init="first")
    alone = [kmeans(torch.from_numpy(p)[None], k=4, iters=300, init="first") for p in problems]
    for b, one in enumerate(alone):
        torch.testing.assert_close(batch.centroids[b], one.centroids[0])
        assert torch.equal(batch.labels[b][valid[b]], one.labels[0])
        assert (batch.labels[b][~valid[b]] == -1).all()
        assert batch.inertia[b].item() == pytest.approx(one.inertia[0].item(), rel=1e-9)
    assert batch.iterations == max(one.iterations for one in alone)


@pytest.mark.parametrize("init", ["first", "k-means++"])
def test_padding_does_not_change_results(init):
    """Invalid points scattered among the valid ones (and huge) against the same problems packed."""
    problems = [blobs(n, std, seed=s) for n, std, s in PROBLEMS]
    points, valid = padded(problems, garbage=1e3)
    packed = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(p) for p in problems], batch_first=True)
    packed_valid = torch.arange(packed.shape[1]) < torch.tensor([len(p) for p in problems])[:, None]
    n_init = 1 if init == "first" else 3
    a, b = (
        kmeans(p, v, k=4, iters=300, init=init, n_init=n_init, generator=torch.Generator().manual_seed(5))
        for p, v in [(points, valid), (packed, packed_valid)]
    )
    torch.testing.assert_close(a.inertia, b.inertia)
    for i in range(len(problems)):  # restarts that tie (the same partition) may swap: compare partitions
        assert adjusted_rand_score(a.labels[i][valid[i]], b.labels[i][packed_valid[i]]) == 1.0


def test_seeded_kmeanspp_is_deterministic():
    points, valid = padded([blobs(500, 4.0, seed=s) for s in range(3)])
    a = kmeans(points, valid, k=4, n_init=3, generator=torch.Generator().manual_seed(0))
    b = kmeans(points, valid, k=4, n_init=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)


def test_kmeanspp_close_to_sklearn_best_of_10():
    problems = [blobs(800, 2.0, seed=s, centers=5) for s in range(4)]
    points, valid = padded(problems)
    got = kmeans(points, valid, k=4, iters=300, n_init=10, generator=torch.Generator().manual_seed(0))
    for b, p in enumerate(problems):
        ref = KMeans(4, n_init=10, random_state=0).fit(p)
        assert got.inertia[b].item() <= 1.05 * ref.inertia_


def test_empty_cluster_takes_the_farthest_point():
    x = blobs(600, 1.0, seed=4, dim=2, centers=4)
    init = np.concatenate([x[[0, 1, 2]], [[1e3, 1e3]]])  # the last centroid attracts no point
    ref = sklearn_fit(x, init)
    got = kmeans(torch.tensor(x)[None], k=4, iters=300, init=torch.tensor(init)[None])
    assert got.inertia.item() == pytest.approx(ref.inertia_, rel=1e-4)
    assert adjusted_rand_score(ref.labels_, got.labels[0].numpy()) == 1.0
    assert len(torch.unique(got.labels)) == 4


@pytest.mark.parametrize("init", ["first", "k-means++"])
def test_fewer_valid_points_than_k(init):
    points, valid = padded([blobs(50, 1.0, seed=0), blobs(2, 1.0, seed=1), np.zeros((0, 8))])
    got = kmeans(points, valid, k=4, init=init, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(got.centroids).all()
    assert (got.labels[~valid] == -1).all() and ((got.labels[valid] >= 0) & (got.labels[valid] < 4)).all()
    assert got.inertia[1].item() == 0 and got.inertia[2].item() == 0
    assert (got.centroids[2] == 0).all()
    two = points[1][valid[1]]  # each of the two points is one of the centroids
    assert torch.cdist(two, got.centroids[1]).min(1).values.max() == 0


def test_no_points_at_all():
    got = kmeans(torch.zeros(2, 0, 3), k=4)
    assert got.centroids.shape == (2, 4, 3) and got.labels.shape == (2, 0) and (got.inertia == 0).all()


def test_argument_errors():
    x = torch.zeros(1, 10, 2)
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, init="first", n_init=2)
    with pytest.raises(ValueError, match="init"):
        kmeans(x, init="random")
    with pytest.raises(ValueError, match="metric"):
        assign(x, x, "cosine")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    points, valid = padded([blobs(500, 4.0, seed=s) for s in range(3)])
    cpu = kmeans(points.float(), valid, k=4, iters=300, init="first")
    gpu = kmeans(points.float().cuda(), valid.cuda(), k=4, iters=300, init="first")
    assert gpu.centroids.is_cuda
    torch.testing.assert_close(gpu.centroids.cpu(), cpu.centroids, rtol=1e-4, atol=1e-4)
    assert torch.equal(gpu.labels.cpu(), cpu.labels)
    seeded = kmeans(points.float().cuda(), valid.cuda(), n_init=4, generator=torch.Generator("cuda").manual_seed(0))
    assert torch.isfinite(seeded.inertia).all()


def test_dot_is_not_nearest_centroid():
    centroids = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    f = torch.tensor([[1.0, 0.0]])  # sits on centroid 0, but its dot product with centroid 1 is larger
    assert assign(f, centroids, "dot").item() == 1
    assert assign(f, centroids, "l2").item() == 0


def test_l2_logits_are_nearest_centroid_up_to_a_per_feature_constant():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 50, 16, generator=g, dtype=torch.float64)
    c = torch.randn(3, 4, 16, generator=g, dtype=torch.float64)
    dist2 = torch.cdist(f, c).square()
    torch.testing.assert_close(assignment_logits(f, c, "l2"), f.square().sum(-1, keepdim=True) - dist2)
    assert torch.equal(assign(f, c, "l2"), dist2.argmin(-1))
    torch.testing.assert_close(assignment_logits(f, c, "dot"), f @ c.transpose(1, 2))


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_upsampling_logits_equals_logits_of_upsampled_features(metric):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 32, 10, 13, generator=g, dtype=torch.float64)  # [B, D, h, w] as a backbone gives them
    centroids = torch.randn(2, 1, 4, 32, generator=g, dtype=torch.float64)  # per image, broadcast over rows

    def logits(feat):  # [B, D, H, W] -> [B, k, H, W]
        return assignment_logits(feat.permute(0, 2, 3, 1), centroids, metric).permute(0, 3, 1, 2)

    up = dict(size=(37, 51), mode="bilinear", align_corners=False)
    upsampled_logits, logits_of_upsampled = F.interpolate(logits(features), **up), logits(F.interpolate(features, **up))
    torch.testing.assert_close(upsampled_logits, logits_of_upsampled, rtol=0, atol=1e-5)
