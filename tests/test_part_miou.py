"""Unsupervised part mIoU against hand-computed values, edge cases and invariants."""
from __future__ import annotations

import numpy as np
import pytest
from evalcases import META, grid, prediction, random_objects, record

from partdistill.evaluation.part_miou import PartMIoUEvaluator
from partdistill.evaluation.samples import Prediction


# cat image, 4 x 6: the object is the left 4 x 4; head = rows 0-1, body = row 2, row 3 = no part
CAT_MASK = np.zeros((4, 6), bool)
CAT_MASK[:, :4] = True
HEAD, BODY = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
HEAD[0:2, :4], BODY[2, :4] = True, True
CAT = record("cat", [(0, CAT_MASK, [(0, HEAD), (1, BODY)])], (4, 6))
CAT_PRED = grid([
    "777733",  # the 3s outside the object are ignored
    "777733",
    "33..33",
    "7.99..",  # 7 spills onto one no-part pixel; 9 overlaps no part at all
])
# car image, 3 x 3, all wheel; a boat (no parts) beside it must not count
CAR_MASK = np.ones((3, 4), bool)
CAR_MASK[:, 3] = False
BOAT_MASK = ~CAR_MASK
CAR = record("car", [(1, CAR_MASK, [(2, CAR_MASK)]), (2, BOAT_MASK, [])], (3, 4))
CAR_PRED = grid(["7770", "7770", "7770"])


def test_hand_computed_majority():
    ev = PartMIoUEvaluator(META)
    ev.process([CAT, CAR], [prediction(CAT_PRED), prediction(CAR_PRED)])
    res = ev.evaluate()
    parts = {(p["class"], p["part"]): p for p in res["per_part"]}
    # cat/head: tp 8, gt 8, pred 8 + 1 spilled = 9; cat/body: tp 2, gt 4, pred 2
    assert (parts["cat", "head"]["tp"], parts["cat", "head"]["gt"], parts["cat", "head"]["pred"]) == (8, 8, 9)
    assert parts["cat", "head"]["IoU"] == pytest.approx(100 * 8 / 9)
    assert parts["cat", "body"]["IoU"] == pytest.approx(50.0)
    assert parts["cat", "body"]["Acc"] == pytest.approx(50.0) and parts["cat", "body"]["IoPred"] == pytest.approx(100.0)
    assert parts["cat", "head"]["IoPred"] == pytest.approx(100 * 8 / 9)
    # car: label 7 maps (per class) to wheel; window and door have gt = pred = 0 and are left out
    assert parts["car", "wheel"]["IoU"] == pytest.approx(100.0)
    assert parts["car", "window"]["IoU"] is None and parts["car", "door"]["Acc"] is None
    cat_map = res["mapping"]["cat"]
    assert (cat_map[7], cat_map[3], cat_map[9]) == ("head", "body", "background")  # 9 overlaps no part
    cat_miou = (100 * 8 / 9 + 50) / 2
    assert res["C-mIoU"] == pytest.approx((cat_miou + 100) / 2)
    assert res["A-mIoU"] == pytest.approx((100 * 8 / 9 + 50 + 100) / 3)
    assert res["C-mACC"] == pytest.approx(((100 + 50) / 2 + 100) / 2)
    assert res["A-mIoPred"] == pytest.approx((100 * 8 / 9 + 100 + 100) / 3)
    assert [c["objects"] for c in res["per_class"]] == [1, 1]  # the boat is no sample
    assert [c["class"] for c in res["per_class"]] == ["cat", "car"]


def test_hungarian_is_one_to_one_and_majority_ties_go_to_the_lowest_part():
    pred = grid([
        "1111..",
        "1122..",  # label 2: head 2 px, body 1 px -> majority head, hungarian body (label 1 has head)
        "2.....",
        "......",
    ])
    maj = PartMIoUEvaluator(META)
    maj.process([CAT], [prediction(pred)])
    hun = PartMIoUEvaluator(META, mapping="hungarian")
    hun.process([CAT], [prediction(pred)])
    assert maj.evaluate()["mapping"]["cat"][2] == "head"
    assert hun.evaluate()["mapping"]["cat"] == {0: "background", 1: "head", 2: "body"}
    # body: tp 1, gt 4, pred 3 -> IoU 1 / 6
    body = [p for p in hun.evaluate()["per_part"] if p["part"] == "body"][0]
    assert body["IoU"] == pytest.approx(100 / 6)
    tie = grid(["......", "5.....", "5.....", "......"])  # label 5: head 1 px, body 1 px
    ev = PartMIoUEvaluator(META)
    ev.process([CAT], [prediction(tie)])
    assert ev.evaluate()["mapping"]["cat"][5] == "head"


def test_identity_mapping_uses_the_global_part_ids():
    pred = np.full((4, 6), -1)
    pred[HEAD], pred[BODY] = 0, 1
    ev = PartMIoUEvaluator(META, mapping="identity")
    ev.process([CAT], [prediction(pred)])
    assert ev.evaluate()["C-mIoU"] == pytest.approx(100.0)
    pred[HEAD] = 2  # "wheel" is no part of a cat: background
    ev.reset()
    ev.process([CAT], [prediction(pred)])
    assert ev.evaluate()["C-mIoU"] == pytest.approx(50.0)


def test_empty_predictions_score_zero_and_perfect_ones_one_hundred():
    ev = PartMIoUEvaluator(META)
    ev.process([CAT, CAR], [Prediction.empty(4, 6), Prediction.empty(3, 4)])
    res = ev.evaluate()
    assert res["C-mIoU"] == 0.0 and res["A-mACC"] == 0.0 and res["A-mIoPred"] is None
    perfect = np.full((4, 6), -1)
    perfect[HEAD], perfect[BODY] = 4, 6
    ev.reset()
    ev.process([CAT, CAR], [prediction(perfect), prediction(np.where(CAR_MASK, 1, -1))])
    assert ev.evaluate()["C-mIoU"] == pytest.approx(100.0) and ev.evaluate()["A-mIoU"] == pytest.approx(100.0)


def random_case(rng, n):
    cases = random_objects(rng, n)
    preds = [prediction(np.where(rng.random(hw) < 0.9, rng.integers(0, 4, size=hw), -1)) for _, _, hw in cases]
    return [r for r, _, _ in cases], preds


def test_permuting_labels_changes_nothing_and_batches_equal_single_images():
    rng = np.random.default_rng(0)
    records, preds = random_case(rng, 12)
    whole = PartMIoUEvaluator(META)
    whole.process(records, preds)
    one_by_one = PartMIoUEvaluator(META)
    for r, p in zip(records, preds):
        one_by_one.process([r], [p])
    np.testing.assert_array_equal(whole.counts, one_by_one.counts)
    permuted = PartMIoUEvaluator(META)
    perm = np.array([3, 0, 2, 1])
    permuted.process(records, [Prediction(p.masks, perm[p.labels] + 10, p.scores) for p in preds])
    for key in ("C-mIoU", "A-mIoU", "C-mACC", "A-mIoPred"):
        assert permuted.evaluate()[key] == pytest.approx(whole.evaluate()[key])


def test_states_merge_across_processes_and_a_match_split_can_differ():
    rng = np.random.default_rng(1)
    records, preds = random_case(rng, 10)
    a, b, whole = PartMIoUEvaluator(META), PartMIoUEvaluator(META), PartMIoUEvaluator(META)
    a.process(records[:5], preds[:5])
    b.process(records[5:], [Prediction(p.masks, p.labels + 7, p.scores) for p in preds[5:]])  # more rows
    whole.process(records[:5], preds[:5])
    whole.process(records[5:], [Prediction(p.masks, p.labels + 7, p.scores) for p in preds[5:]])
    a.merge(b.state())
    np.testing.assert_array_equal(a.counts, whole.counts)
    # a mapping learned on another split: labels it never saw map to background
    match = PartMIoUEvaluator(META)
    match.process([CAT], [prediction(CAT_PRED)])
    scored = PartMIoUEvaluator(META)
    scored.process([CAT], [prediction(np.where(CAT_PRED == 7, 8, CAT_PRED))])  # 8 unseen in match
    head = [p for p in scored.evaluate(match=match)["per_part"] if p["part"] == "head"][0]
    assert head["tp"] == 0 and head["pred"] == 0


def test_higher_scores_win_where_segments_overlap():
    masks = np.zeros((2, 4, 6), bool)
    masks[0, :, :4] = True  # label 0 everywhere, low score
    masks[1, :2, :4] = True  # label 1 on the head, high score
    ev = PartMIoUEvaluator(META)
    ev.process([CAT], [Prediction(masks, np.array([0, 1]), np.array([0.2, 0.9]))])
    assert ev.evaluate()["mapping"]["cat"] == {0: "body", 1: "head"}
