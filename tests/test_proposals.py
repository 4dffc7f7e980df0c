"""Part proposal AR against hand-computed values, edge cases and invariants."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from evalcases import random_objects, record
from pycocotools import mask as mask_utils

from partdistill.data import masks
from partdistill.data.catalog import Metadata
from partdistill.evaluation import proposals
from partdistill.evaluation.proposals import ProposalAREvaluator, greedy_match, mask_iou
from partdistill.evaluation.samples import Prediction

META = Metadata(
    thing_classes=["cat", "boat"],
    part_classes=["head", "body"],
    parts_of={0: [0, 1], 1: []},
)


def box(shape, rows, cols) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[rows, cols] = True
    return out


def evaluate(records, preds, **kwargs) -> dict:
    ev = ProposalAREvaluator(META, **kwargs)
    ev.process(records, preds)
    return ev.evaluate()


# 4 x 8 image: the cat is the left 4 x 4; head = rows 0-1, body = rows 2-3
SHAPE = (4, 8)
CAT_MASK = box(SHAPE, slice(None), slice(0, 4))
HEAD, BODY = box(SHAPE, slice(0, 2), slice(0, 4)), box(SHAPE, slice(2, 4), slice(0, 4))
CAT = record("cat", [(0, CAT_MASK, [(0, HEAD), (1, BODY)])], SHAPE)
HALF_BODY = box(SHAPE, 2, slice(0, 4))  # IoU 4 / 8 = 0.5 with the body: counts at t = 0.50 only
OUTSIDE = box(SHAPE, slice(None), slice(5, 8))


def test_hand_computed_perfect_half_and_outside_proposals():
    # the outside proposal scores highest but misses the object: dropped, so it takes no top-1 slot
    pred = Prediction(np.stack([HEAD, HALF_BODY, OUTSIDE]), np.zeros(3, np.int64), np.array([0.9, 0.8, 0.95]))
    res = evaluate([CAT], [pred], limits=(1, 10))
    assert res["AR@1"] == pytest.approx(100 * 10 / 10 / 2)  # head matched at all 10 thresholds, body not
    assert res["AR@10"] == pytest.approx(100 * (10 + 1) / 10 / 2)  # + the body at t = 0.50
    assert res["AR-nonoverlap@1"] == res["AR@1"] and res["AR-nonoverlap@10"] == res["AR@10"]  # disjoint already
    assert (res["objects"], res["gt_parts"]) == (1, 2)


def test_min_gt_iou_drops_proposals_before_the_top_k():
    barely = OUTSIDE | box(SHAPE, 3, 3)  # one body pixel in the object: IoU 1 / 8 with the body
    pred = Prediction(np.stack([HEAD, barely]), np.zeros(2, np.int64), np.array([0.9, 0.95]))
    assert evaluate([CAT], [pred], limits=(1, 2))["AR@1"] == 0.0  # kept: it is the top-1 and matches below 0.5
    assert evaluate([CAT], [pred], limits=(1, 2), min_gt_iou=0.1)["AR@1"] == 0.0
    assert evaluate([CAT], [pred], limits=(1, 2), min_gt_iou=0.125)["AR@1"] == pytest.approx(50.0)  # IoU <= is dropped
    with pytest.raises(ValueError, match="min_gt_iou"):
        ProposalAREvaluator(META, min_gt_iou=-1)


def test_equal_scores_keep_their_order():
    pred = Prediction(np.stack([HALF_BODY, HEAD]), np.zeros(2, np.int64), np.array([0.5, 0.5]))
    assert evaluate([CAT], [pred], limits=(1,))["AR@1"] == pytest.approx(100 * 1 / 10 / 2)  # the first one


def test_greedy_is_not_optimal():
    # q0 fits the body best (0.9) but could take the head (0.6); q1 fits only the body (0.8)
    rows, cols = greedy_match(np.array([[0.6, 0.9], [0.0, 0.8]]))
    assert rows.tolist() == [0] and cols.tolist() == [1]  # q1 stays unmatched: optimal would be q0-head, q1-body
    assert greedy_match(np.zeros((3, 2)))[0].size == 0  # IoU-0 pairs are never made
    # the same through the evaluator, with overlapping GT parts on a 1 x 20 object
    shape = (1, 20)
    obj = box(shape, 0, slice(None))
    head, body = box(shape, 0, slice(0, 10)), box(shape, 0, slice(0, 12))
    q0, q1 = box(shape, 0, slice(0, 11)), box(shape, 0, slice(0, 14))
    # IoU: q0-head 10/11, q0-body 11/12, q1-head 10/14, q1-body 12/14. Greedy: q0-body (9 thresholds),
    # q1-head 0.714 (5) -> 14 / 20; the optimal q0-head (9) + q1-body 0.857 (8) would give 17 / 20.
    pred = Prediction(np.stack([q0, q1]), np.zeros(2, np.int64), np.array([0.9, 0.8]))
    res = evaluate([record(0, [(0, obj, [(0, head), (1, body)])], shape)], [pred], limits=(10,))
    assert res["AR@10"] == pytest.approx(100 * 14 / 20)


def test_nonoverlap_gives_pixels_to_the_higher_score():
    # the body proposal is perfect, but a higher-scoring one covers its top row and one is hidden entirely
    hidden = box(SHAPE, 3, slice(0, 2))
    pred = Prediction(np.stack([BODY, HALF_BODY, hidden]), np.zeros(3, np.int64), np.array([0.5, 0.9, 0.1]))
    res = evaluate([CAT], [pred], limits=(1, 2, 10))
    assert res["AR@1"] == pytest.approx(100 * 1 / 10 / 2)  # the half body ranks first
    assert res["AR@10"] == pytest.approx(100 * 10 / 10 / 2)  # the body proposal matches at every threshold
    # segments: row 2 (0.9) and row 3 (0.5), each IoU 0.5 with the body; the hidden one is empty
    assert res["AR-nonoverlap@1"] == pytest.approx(100 * 1 / 10 / 2)
    assert res["AR-nonoverlap@10"] == pytest.approx(100 * 1 / 10 / 2)
    # the hidden proposal took no slot: with it, the overlapping AR@2 still holds the body proposal
    assert res["AR@2"] == res["AR@10"]


def test_empty_predictions_score_zero_and_objects_without_parts_are_not_counted():
    boat = box(SHAPE, slice(None), slice(5, 8))
    partless_cat = box(SHAPE, 0, slice(4, 5))
    rec = record("x", [(0, CAT_MASK, [(0, HEAD), (1, BODY)]), (1, boat, []), (0, partless_cat, [])], SHAPE)
    res = evaluate([rec], [Prediction.empty(*SHAPE)])
    assert all(res[f"{kind}@{k}"] == 0.0 for kind in ("AR", "AR-nonoverlap") for k in (1, 10, 50, 100, 200))
    assert (res["objects"], res["gt_parts"]) == (1, 2)
    perfect = Prediction(np.stack([HEAD, BODY, boat, partless_cat]), np.zeros(4, np.int64), np.ones(4))
    assert evaluate([rec], [perfect])["AR@10"] == pytest.approx(100.0)
    nothing = evaluate([record("y", [(1, boat, [])], SHAPE)], [perfect])
    assert nothing["AR@1"] is None and nothing["gt_parts"] == 0


def random_case(rng, n):
    cases = random_objects(rng, n, sizes=(6, 14), coverage=0.85)
    records, preds = [r for r, _, _ in cases], []
    for _, part_of, (h, w) in cases:
        n_prop = rng.integers(0, 8)
        props = rng.random((n_prop, h, w)) < rng.random((n_prop, 1, 1))
        for m in range(0, n_prop, 2):  # every other one a noisy copy of a part, so that some IoUs pass 0.5
            props[m] = (part_of == rng.integers(0, 2)) ^ (rng.random((h, w)) < 0.1)
        preds.append(Prediction(props, np.zeros(n_prop, np.int64), rng.random(n_prop).round(1)))  # some ties
    return records, preds


def test_states_merge_and_batches_equal_single_images():
    rng = np.random.default_rng(0)
    records, preds = random_case(rng, 16)
    whole = ProposalAREvaluator(META, limits=(1, 3, 10))
    whole.process(records, preds)
    a, b = ProposalAREvaluator(META, limits=(1, 3, 10)), ProposalAREvaluator(META, limits=(1, 3, 10))
    for r, p in zip(records[:7], preds[:7]):
        a.process([r], [p])
    b.process(records[7:], preds[7:])
    a.merge(b.state())
    for key, value in whole.state().items():
        np.testing.assert_array_equal(a.state()[key], value)
    assert a.evaluate() == whole.evaluate()
    assert 0 < whole.evaluate()["AR@10"] < 100
    with pytest.raises(ValueError, match="merge"):
        a.merge(ProposalAREvaluator(META, limits=(1,)).state())


def reference_ar(records, preds, limits) -> dict:
    """The definition written out literally: full-image segments, detectron2's greedy loop, exact fractions."""
    hits, gt_parts = {}, 0
    for rec, pred in zip(records, preds):
        for obj in rec["annotations"]:
            obj_mask = masks.decode(obj["segmentation"])
            gts = [masks.decode(p["segmentation"]) & obj_mask for p in obj["parts"]]
            gt_parts += len(gts)
            winners = pred.winner_map()
            segments = [(winners == i, pred.scores[i]) for i in range(len(pred.scores)) if (winners == i).any()]
            for kind, props in (("AR", list(zip(pred.masks, pred.scores))), ("AR-nonoverlap", segments)):
                order = sorted(range(len(props)), key=lambda i: -props[i][1])
                cut = [props[i][0] & obj_mask for i in order]
                frac = [[Fraction(int((m & g).sum()), max(int((m | g).sum()), 1)) for g in gts] for m in cut]
                frac = [row for row in frac if max(row) > Fraction(1, 1000)]
                for k in limits:
                    ov = [list(row) for row in frac[:k]]
                    for _ in range(min(len(ov), len(gts))):
                        g = max(range(len(gts)), key=lambda j: max(row[j] for row in ov))
                        p = max(range(len(ov)), key=lambda i: ov[i][g])
                        for t in range(10, 20):
                            hits[kind, k, t] = hits.get((kind, k, t), 0) + (ov[p][g] >= Fraction(t, 20))
                        ov[p] = [Fraction(-1)] * len(gts)
                        for row in ov:
                            row[g] = Fraction(-1)
    return {f"{kind}@{k}": 100 * sum(hits.get((kind, k, t), 0) for t in range(10, 20)) / 10 / gt_parts
            for kind in ("AR", "AR-nonoverlap") for k in limits}


def test_matches_the_definition_written_out():
    records, preds = random_case(np.random.default_rng(3), 10)
    res = evaluate(records, preds, limits=(1, 2, 4, 10))
    for key, value in reference_ar(records, preds, (1, 2, 4, 10)).items():
        assert res[key] == pytest.approx(value), key


def rles(stack: np.ndarray) -> list[dict]:
    return mask_utils.encode(np.asfortranarray(stack.transpose(1, 2, 0).astype(np.uint8)))


@pytest.mark.parametrize("float32", [True, False])
def test_mask_iou_equals_pycocotools(monkeypatch, float32):
    if not float32:  # the float64 path for masks of 2^24 pixels or more, tried on small ones
        monkeypatch.setattr(proposals, "FLOAT32_EXACT", 8)
    rng = np.random.default_rng(2)
    a = rng.random((30, 17, 23)) < rng.random((30, 1, 1))
    b = rng.random((9, 17, 23)) < rng.random((9, 1, 1)) * 0.5
    a[0], b[0], a[1] = False, False, b[2]  # empty masks (IoU 0) and an exact match
    ours = mask_iou(a.reshape(30, -1), b.reshape(9, -1))
    theirs = mask_utils.iou(rles(a), rles(b), [0] * 9)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert ours[1, 2] == 1.0 and not ours[0].any() and not ours[:, 0].any()
