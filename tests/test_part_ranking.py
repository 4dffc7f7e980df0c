"""Stage part_ranking: per-class clustering of planted query features, the unique per-pixel
assignment and its filters by hand, the query feature, and the stage end to end on synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from partdistill import stages
from partdistill.data import masks, synthetic
from partdistill.errors import UserError
from partdistill.models import ranking
from partdistill.stages import part_ranking
from partdistill.store import Store, StoreMismatch


def planted(counts: dict[str, int], k: int, dim: int = 16, noise: float = 0.05, seed: int = 0):
    """Per class, `counts[c]` features around k orthonormal directions of its own, and the planted labels."""
    g = torch.Generator().manual_seed(seed)
    features, truth = {}, {}
    for c, n in counts.items():
        directions = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0][:k]
        labels = torch.randperm(n, generator=g) % k
        features[c] = directions[labels] + noise * torch.randn(n, dim, generator=g)
        truth[c] = labels
    return features, truth


def centroids_of(clusters, key: str):
    """A class's centroids [K, D], or None when it was not clustered."""
    return clusters.centroids[clusters.classes.index(key)] if key in clusters.classes else None


@pytest.mark.parametrize("metric, normalize", [("l2", True), ("dot", False)])
def test_clusters_recover_planted_part_types_per_class(metric, normalize):
    k, dim = 4, 16
    features, truth = planted({"cat": 40, "dog": 25, "owl": 61}, k, dim)
    features |= {"few": torch.randn(k, dim), "none": torch.zeros(0, dim)}  # not more features than clusters
    if normalize:
        features = {c: F.normalize(f, dim=-1) for c, f in features.items()}
    clusters = ranking.cluster_classes(features, k, dim, iters=100, n_init=4, generator=torch.Generator().manual_seed(0))
    assert clusters.classes == ["cat", "dog", "owl"] and clusters.counts == [40, 25, 61]
    assert clusters.centroids.shape == (3, k, dim)
    assert clusters.too_few == {"few": k, "none": 0}
    assert centroids_of(clusters, "few") is None and centroids_of(clusters, "none") is None
    for c in clusters.classes:
        probs = ranking.classify(features[c], centroids_of(clusters, c), metric)
        assert probs.shape == (len(features[c]), k) and torch.allclose(probs.sum(-1), torch.ones(len(probs)))
        assert adjusted_rand_score(truth[c].numpy(), probs.argmax(-1).numpy()) == 1.0
    # in groups of a bounded padded size (here one class per group) the same planted types come out
    grouped = ranking.cluster_classes(features, k, dim, iters=100, n_init=4, generator=torch.Generator().manual_seed(0),
                                      max_elements=61 * dim)
    assert grouped.classes == clusters.classes and grouped.counts == clusters.counts
    for c in grouped.classes:
        labels = ranking.classify(features[c], centroids_of(grouped, c), metric).argmax(-1)
        assert adjusted_rand_score(truth[c].numpy(), labels.numpy()) == 1.0
    assert ranking._size_groups(["cat", "dog", "owl"], features, dim, 2 * 61 * dim) == [["owl", "cat"], ["dog"]]
    # no class has enough features: nothing is clustered, the shapes stay well defined
    none = ranking.cluster_classes({"few": features["few"]}, k, dim)
    assert none.classes == [] and none.centroids.shape == (0, k, dim) and none.too_few == {"few": k}


def hand_case():
    """Three masks on a 2x4 image: q0 left half, q1 top right, q2 weakly at the bottom-right pixel;
    pixel (1, 2) has no positive logit (background)."""
    logits = torch.full((3, 2, 4), -5.0)
    logits[0, :, :2] = 5.0
    logits[1, 0, 2:] = 5.0
    logits[2, 1, 3] = 0.5
    return logits, torch.tensor([0.9, 0.8, 0.2])


def test_unique_assignment_and_filters_by_hand():
    logits, scores = hand_case()
    winner = ranking.unique_assignment(logits, scores)
    assert winner.tolist() == [[0, 0, 1, 1], [0, 0, -1, 2]]
    areas = ranking.areas_of(winner, 3)
    assert areas.tolist() == [4, 2, 1]  # foreground: 7 pixels
    keep = ranking.filter_parts
    assert keep(areas, scores, 7, 0.2, 0.0).tolist() == [True, True, False]  # 1/7 < 0.2
    assert keep(areas, scores, 7, 0.2, 0.85).tolist() == [True, False, False]
    assert keep(areas, scores, 7, 0.2, 0.95).tolist() == [True, True, False]  # no score survives: not applied
    assert keep(areas, scores, 7, 0.9, 0.5).tolist() == [True, True, False]  # no area survives: not applied
    assert keep(areas, scores, 7, 0.9, 0.99).tolist() == [True, True, True]  # neither applies
    assert keep(torch.tensor([4, 0, 1]), scores, 5, 0.0, 0.0).tolist() == [True, False, True]  # no pixels: never
    # a valid-region restriction, as the label pass uses for the object mask
    inside = torch.zeros(2, 4, dtype=torch.bool)
    inside[:, 2:] = True
    assert ranking.unique_assignment(logits, scores, inside).tolist() == [[-1, -1, 1, 1], [-1, -1, -1, 2]]
    # cluster pass: object A = the left half, object B = the right column; filters relative to the
    # whole foreground, then the IoU with each object
    objects = torch.zeros(2, 2, 4, dtype=torch.bool)
    objects[0, :, :2] = True
    objects[1, :, 3] = True
    kept = ranking.cluster_pass(logits, scores, objects, ranking.Filters(0.2, 0.0, 0.001))
    assert [k.tolist() for k in kept] == [[0], [1]]  # q2 fails the area filter
    kept = ranking.cluster_pass(logits, scores, objects, ranking.Filters(0.0, 0.0, 0.001))
    assert [k.tolist() for k in kept] == [[0], [1, 2]]
    kept = ranking.cluster_pass(logits, scores, objects, ranking.Filters(0.0, 0.0, 0.6))
    assert [k.tolist() for k in kept] == [[0], []]  # q1 and q2 each cover half of B


def test_label_pass_selects_pairs_merges_labels_and_filters_by_hand():
    queries, labels, scores = ranking.select_pairs(torch.tensor([0.9, 0.5]), torch.tensor([[0.6, 0.4], [0.1, 0.9]]), 3)
    # pairs by score: (q0, k0) .54, (q1, k1) .45, (q0, k1) .36: each query keeps its best
    assert queries.tolist() == [0, 1] and labels.tolist() == [0, 1]
    assert torch.allclose(scores, torch.tensor([0.54, 0.45]))
    logits, scores = hand_case()
    labels, everywhere = torch.tensor([2, 0, 0]), torch.ones(2, 4, dtype=torch.bool)
    parts = ranking.label_parts(logits, labels, scores, everywhere, 3, ranking.Filters(0.0, 0.0, 0.001))
    assert parts.label_map.tolist() == [[2, 2, 0, 0], [2, 2, -1, 0]]  # q1 and q2 merged into label 0
    assert parts.labels.tolist() == [0, 2] and parts.areas.tolist() == [3, 4]
    assert torch.allclose(parts.scores, torch.tensor([0.8, 0.9]))  # the merged label's best score
    parts = ranking.label_parts(logits, labels, scores, everywhere, 3, ranking.Filters(0.5, 0.85, 0.001))
    assert parts.labels.tolist() == [2] and parts.label_map.tolist() == [[2, 2, -1, -1], [2, 2, -1, -1]]
    parts = ranking.label_parts(logits, labels, scores, everywhere, 3, ranking.Filters(0.0, 0.95, 0.001))
    assert parts.labels.tolist() == [0, 2]  # no score above 0.95: the score filter is not applied
    right = torch.zeros(2, 4, dtype=torch.bool)
    right[:, 2:] = True
    parts = ranking.label_parts(logits, labels, scores, right, 3, ranking.Filters(0.0, 0.0, 0.001))
    assert parts.labels.tolist() == [0] and parts.areas.tolist() == [3]


def test_the_query_feature_is_what_the_class_head_reads():
    from partdistill.models.inputs import preprocess
    from partdistill.models.mask2former import build_model

    model = build_model({"name": "tiny", "backbone": {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8],
                                                      "window_size": 4, "image_size": 64},
                         "hidden_dim": 64, "num_queries": 10, "decoder_layers": 2}, num_labels=1).eval()
    batch = preprocess([np.zeros((64, 64, 3), np.uint8)], size=64)
    with torch.no_grad():
        outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
        features = ranking.query_features(model, outputs)
        assert features.shape == (1, 10, 64)
        assert torch.allclose(model.class_predictor(features), outputs.class_queries_logits, atol=1e-5)
    probs = ranking.foreground_probs(outputs.class_queries_logits)
    assert torch.allclose(probs, outputs.class_queries_logits.softmax(-1)[..., 0])


# ---------------------------------------------------------------------------------------------
# end to end


def run(compose_cfg, run_dir, stage, *overrides):
    return stages.run(compose_cfg("experiment=smoke", f"stage={stage}", f"run_dir={run_dir}", *overrides))[stage]


def test_part_ranking_end_to_end(tmp_path, monkeypatch, compose_cfg, capsys):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=16, seed=0)
    run_dir = tmp_path / "runs/a"
    run(compose_cfg, run_dir, "object_masks")
    run(compose_cfg, run_dir, "pixel_grouping")
    with pytest.raises(UserError, match="stage=proposal_learning") as missing:
        run(compose_cfg, run_dir, "part_ranking")
    assert "model.weights=" in str(missing.value) and not (run_dir / "store/part_ranking").exists()
    run(compose_cfg, run_dir, "proposal_learning", "stage.eval_suites=[]")
    ckpt = run_dir / "proposal_learning/checkpoints/model-0000004.safetensors"
    cfg = compose_cfg("experiment=smoke", "stage=part_ranking", f"run_dir={run_dir}")
    assert part_ranking.proposal_weights(cfg) == (ckpt, 4)
    cfg.model.weights = str(ckpt)
    assert part_ranking.proposal_weights(cfg) == (ckpt, 4)

    one = run(compose_cfg, run_dir, "part_ranking", "stage.partition=1")
    store = Store.open(run_dir / "store", "part_ranking")
    assert one["partitions_written"] == 1 and store.complete() == [1]
    rest = run(compose_cfg, run_dir, "part_ranking")
    assert rest["partitions_written"] == 1 and store.complete() == [0, 1]  # shard 1 was complete: skipped
    assert "part_ranking: " in capsys.readouterr().out
    again = run(compose_cfg, run_dir, "part_ranking")
    assert again["partitions_written"] == 0 and again["images"] == 0

    k, classes, not_clustered = 3, [], 0
    for i in (0, 1):
        arrays, manifest = store.arrays(i), store.manifest(i)
        assert set(arrays) == {"centroids", "centroid_classes", "feature_counts"}
        assert arrays["centroids"].dtype == np.float32 and arrays["centroids"].shape == (len(arrays["centroid_classes"]), k, 64)
        assert (arrays["feature_counts"] > k).all()
        assert set(arrays["centroid_classes"].tolist()) <= set(manifest["classes"])
        classes += arrays["centroid_classes"].tolist()
        not_clustered += sum("not clustered" in reason for _, reason in manifest["skipped"])
    counts = {key: one[key] + rest[key] for key in ("images", "objects", "parts", "classes", "classes_too_few_features",
                                                    "skipped")}
    assert counts["classes"] == len(classes) >= 1 and counts["classes"] + counts["classes_too_few_features"] == 4
    assert (not_clustered > 0) == (counts["classes_too_few_features"] > 0)  # their images, named in the manifest
    assert store.summary()["skipped"] == counts["skipped"] and counts["images"] + counts["skipped"] == 16

    records = list(store.records())
    assert len(records) == counts["images"] >= 1
    assert sum(len(r["objects"]) for r in records) == counts["objects"]
    for record in records:
        assert set(record) == {"image_id", "file_name", "height", "width", "class_key", "class_id", "objects"}
        assert record["class_key"] in classes
        size = record["height"] * record["width"]
        for obj in record["objects"]:
            assert set(obj) == {"segmentation", "category_id", "object_ratio", "parts"} and obj["parts"]
            object_mask = masks.decode(obj["segmentation"])
            assert obj["object_ratio"] == pytest.approx(object_mask.sum() / size)
            covered = np.zeros_like(object_mask, dtype=int)
            for part in obj["parts"]:
                assert set(part) == {"segmentation", "label", "score", "ratio"}
                assert 0 <= part["label"] < k and 0.0 <= part["score"] <= 1.0
                part_mask = masks.decode(part["segmentation"])
                assert part_mask.any() and not (part_mask & ~object_mask).any()
                assert part["ratio"] == pytest.approx(part_mask.sum() / size)
                covered += part_mask
            assert covered.max() == 1  # one label per pixel
            assert len({p["label"] for p in obj["parts"]}) == len(obj["parts"])  # merged by label

    with pytest.raises(StoreMismatch, match="identity.min_score_2: 0.0 \\(stored\\) vs 0.5 \\(now\\)"):
        run(compose_cfg, run_dir, "part_ranking", "stage.min_score_2=0.5")
