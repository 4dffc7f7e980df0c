"""Part-ranking clustering: all classes of a partition in one batched k-means against the paper's
per-class loop.

The paper's `ClusteringModule` gathers every class's proposal features on rank 0 and runs
`sklearn.cluster.KMeans(n_clusters=8, random_state=0)` (scikit-learn 1.1.1: n_init=10, max_iter=300,
tol=1e-4, Lloyd) once per class. `models.ranking.cluster_classes` clusters all classes of a partition
in one padded, batched call of the project's torch k-means. This times, in one run and on the same
data: (a) the per-class scikit-learn loop, n_init=10 and n_init=1; (b) `cluster_classes`, n_init=10 and
n_init=1. It prints seconds, speed-ups and the mean per-class inertia ratio ours / scikit-learn's.

Data: per class N ~ U[200, 3000] L2-normalised 256-d query features (the paper's 22K setting normalises
them) around 4-12 "part type" directions with unequal shares plus noise: one 22K partition holds about
55 classes (22,000 classes / 400 partitions).

Both sides must reach the same quality: ours' mean inertia within 25% of scikit-learn's with one run
and within 5% with ten (measured: 9.5% and 0.5% at the default sizes, at most 15.5% and 2.1% over
seeds 0-5 at the smoke sizes; one run's classic k-means++ seeding is the gap, see the README).
Centroids handed to the wrong class land far outside (7.8x at the smoke sizes); a loop stopped after
one iteration only on some seeds (not the smoke run's), which tests/test_kmeans.py covers instead.
`--smoke` runs it all on 8 classes of 200-600 features in a few seconds (tests/test_benchmarks.py);
its times mean nothing.

    python benchmarks/bench_ranking.py --classes 55 [--smoke]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from partdistill.models.ranking import cluster_classes

K, DIM = 8, 256


def make_classes(classes: int, seed: int, min_features: int, max_features: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = {}
    for c in range(classes):
        size = int(torch.randint(min_features, max_features + 1, (1,), generator=g))
        types = int(torch.randint(4, 13, (1,), generator=g))
        directions = torch.nn.functional.normalize(torch.randn(types, DIM, generator=g), dim=1)
        share = torch.rand(types, generator=g) + 0.1
        label = torch.multinomial(share, size, replacement=True, generator=g)
        points = directions[label] + 0.5 * torch.randn(size, DIM, generator=g) / DIM ** 0.5  # noise norm ~0.5
        features[f"n{c:08d}"] = torch.nn.functional.normalize(points, dim=1)
    return features


def inertia(points: np.ndarray, centroids: np.ndarray) -> float:
    d = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float(d.min(1).sum())


def sklearn_loop(features: dict[str, torch.Tensor], n_init: int) -> dict[str, np.ndarray]:
    return {c: KMeans(n_clusters=K, random_state=0, n_init=n_init, max_iter=300, tol=1e-4, algorithm="lloyd")
            .fit(f.numpy()).cluster_centers_ for c, f in features.items()}


def ours(features: dict[str, torch.Tensor], n_init: int) -> dict[str, np.ndarray]:
    result = cluster_classes(features, K, DIM, iters=300, tol=1e-4, n_init=n_init,
                             generator=torch.Generator().manual_seed(0))
    return {c: result.centroids[i].numpy() for i, c in enumerate(result.classes)}


def timed(fn, *args) -> tuple[float, dict]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=55)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--min-features", type=int, default=200, help="features per class: uniform in min..max")
    parser.add_argument("--max-features", type=int, default=3000)
    parser.add_argument("--smoke", action="store_true", help="8 small classes: checks that it runs and agrees")
    if parser.parse_known_args()[0].smoke:  # one thread: it checks results, and idle threads spin on a busy machine
        parser.set_defaults(classes=8, min_features=200, max_features=600, threads=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features = make_classes(args.classes, args.seed, args.min_features, args.max_features)
    sizes = [len(f) for f in features.values()]
    print(f"{args.classes} classes, {sum(sizes)} features of {DIM} dims (per class {min(sizes)}..{max(sizes)}), "
          f"k={K}, {args.threads} thread(s)")
    rows = {}
    for n_init in (1, 10):
        seconds_ours, centroids_ours = timed(ours, features, n_init)
        seconds_sk, centroids_sk = timed(sklearn_loop, features, n_init)
        ratio = np.mean([inertia(features[c].numpy(), centroids_ours[c]) / inertia(features[c].numpy(), centroids_sk[c])
                         for c in features])
        rows[n_init] = (seconds_ours, seconds_sk, ratio)
        print(f"n_init={n_init:2d}: batched cluster_classes {seconds_ours:7.2f} s | per-class sklearn loop "
              f"{seconds_sk:7.2f} s | speed-up {seconds_sk / seconds_ours:5.1f}x | mean inertia ratio ours/sklearn "
              f"{ratio:.4f}")
    print(f"the paper's loop (n_init=10) / ours with n_init=10: {rows[10][1] / rows[10][0]:.1f}x")
    for n_init, band in ((1, 0.25), (10, 0.05)):  # the bands of the module docstring
        ratio = rows[n_init][2]
        assert abs(ratio - 1) <= band, f"n_init={n_init}: mean inertia ours / sklearn {ratio:.4f}, not within {band:.0%}"


if __name__ == "__main__":
    main()
