"""Supervised part mIoU and COCO part AP against hand-computed values, edge cases and invariants."""
from __future__ import annotations

import numpy as np
import pytest
from evalcases import META, grid, prediction, random_objects, record

from partdistill.data import masks
from partdistill.evaluation.coco_ap import PartAPEvaluator
from partdistill.evaluation.samples import Prediction
from partdistill.evaluation.supervised import SupervisedMIoUEvaluator


def segments(*items) -> Prediction:
    """Prediction from (mask, label, score) triples."""
    return Prediction(np.stack([m for m, _, _ in items]), np.array([k for _, k, _ in items]),
                      np.array([s for _, _, s in items], np.float32))


# cat image, 4 x 6: the object is the left 4 x 4; head = rows 0-1, body = row 2, row 3 = no part
CAT_MASK = np.zeros((4, 6), bool)
CAT_MASK[:, :4] = True
HEAD, BODY = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
HEAD[0:2, :4], BODY[2, :4] = True, True
CAT = record("cat", [(0, CAT_MASK, [(0, HEAD), (1, BODY)])], (4, 6))
# car image, 3 x 4: the car (left 3 columns) is all wheel; the boat beside it has no parts
CAR_MASK = np.ones((3, 4), bool)
CAR_MASK[:, 3] = False
CAR = record("car", [(1, CAR_MASK, [(2, CAR_MASK)]), (2, ~CAR_MASK, [])], (3, 4))


def random_case(rng, n):
    cases = random_objects(rng, n)
    preds = []
    for _, _, hw in cases:
        pred = prediction(np.where(rng.random(hw) < 0.9, rng.integers(0, 4, size=hw), -1))
        preds.append(Prediction(pred.masks, pred.labels, rng.random(len(pred.labels)).astype(np.float32)))
    return [r for r, _, _ in cases], preds


# --- supervised mIoU --------------------------------------------------------------------------


def test_supervised_hand_computed():
    cat_pred = grid([
        "000011",  # columns 4-5 are outside the object and ignored
        "0011..",  # head: 2 px head, 2 px body
        "11.2..",  # body: 2 px body, 1 px nothing, 1 px wheel
        "09.1..",  # no part: head, 9 (no part id -> background), nothing, body
    ])
    ev = SupervisedMIoUEvaluator(META)
    ev.process([CAT, CAR], [prediction(cat_pred), Prediction.empty(3, 4)])  # wheel never predicted on the car
    res = ev.evaluate()
    rows = {r["part"]: r for r in res["per_part"]}
    assert [(rows[p]["tp"], rows[p]["gt"], rows[p]["pred"]) for p in ("head", "body", "wheel")] == [
        (6, 8, 7), (2, 4, 5), (0, 9, 1)]
    assert rows["head"]["IoU"] == pytest.approx(100 * 6 / 9) and rows["body"]["IoU"] == pytest.approx(100 * 2 / 7)
    assert rows["wheel"]["IoU"] == 0.0 and rows["wheel"]["Acc"] == 0.0
    assert rows["window"]["IoU"] is None and rows["door"]["Acc"] is None  # gt = pred = 0: left out
    assert res["mIoU"] == pytest.approx((100 * 6 / 9 + 100 * 2 / 7 + 0) / 3)
    assert res["mACC"] == pytest.approx((75 + 50 + 0) / 3)
    # correct: 6 head + 2 body + 2 background (the '.' and the 9) of 16 cat + 9 car pixels
    assert res["pixel_acc"] == pytest.approx(100 * 10 / 25)
    assert res["objects"] == 2  # the part-less boat is no sample
    assert ev.conf[5, 5] == 2 and ev.conf.sum() == 25


def test_supervised_perfect_and_empty():
    perfect = np.full((4, 6), -1)
    perfect[HEAD], perfect[BODY] = 0, 1
    perfect[3, :] = 7  # no part id: counts as background, which is right on the no-part row
    ev = SupervisedMIoUEvaluator(META)
    ev.process([CAT, CAR], [prediction(perfect), prediction(np.where(CAR_MASK, 2, -1))])
    res = ev.evaluate()
    assert res["mIoU"] == pytest.approx(100.0) and res["mACC"] == pytest.approx(100.0)
    assert res["pixel_acc"] == pytest.approx(100.0)
    ev.reset()
    assert ev.evaluate()["mIoU"] is None and ev.evaluate()["pixel_acc"] is None


def test_supervised_merge_equals_single_and_batches_equal_images():
    records, preds = random_case(np.random.default_rng(0), 10)
    whole, a, b, one_by_one = (SupervisedMIoUEvaluator(META) for _ in range(4))
    whole.process(records, preds)
    a.process(records[:4], preds[:4])
    b.process(records[4:], preds[4:])
    a.merge(b.state())
    for r, p in zip(records, preds):
        one_by_one.process([r], [p])
    for other in (a, one_by_one):
        np.testing.assert_array_equal(other.conf, whole.conf)
        assert other.evaluate() == whole.evaluate()


# --- COCO part AP -----------------------------------------------------------------------------

# 10 x 10 image, the object is the whole image: head = rows 0-4 (50 px), body = rows 5-9
FULL = np.ones((10, 10), bool)
HEAD10, BODY10 = FULL.copy(), FULL.copy()
HEAD10[5:], BODY10[:5] = False, False
TWO_PARTS = record("two", [(0, FULL, [(0, HEAD10), (1, BODY10)])], (10, 10))
HEAD_ONLY = record("head", [(0, FULL, [(0, HEAD10)])], (10, 10))


def ap(records, preds, class_agnostic=False) -> dict:
    ev = PartAPEvaluator(META, class_agnostic=class_agnostic)
    ev.process(records, preds)
    return ev.evaluate()


def test_ap_perfect_predictions_score_one_hundred():
    res = ap([TWO_PARTS, CAR], [segments((HEAD10, 0, 0.9), (BODY10, 1, 0.8)), segments((CAR_MASK, 2, 0.5))])
    for key in ("AP", "AP50", "AP75", "AR@1", "AR@10", "AR@100"):
        assert res[key] == pytest.approx(100.0), key
    assert (res["images"], res["gt_instances"], res["predictions"]) == (2, 3, 3)
    rows = {r["part"]: r for r in res["per_part"]}
    assert rows["wheel"]["AP"] == pytest.approx(100.0) and rows["door"]["AP"] is None


def test_ap_a_prediction_with_iou_0_6_matches_at_50_not_at_75():
    pred = HEAD10.copy()
    pred[3:] = False  # rows 0-2: 30 px inside the 50 px head, IoU 0.6
    res = ap([HEAD_ONLY], [segments((pred, 0, 0.9))])
    assert res["AP50"] == pytest.approx(100.0) and res["AP75"] == 0.0
    # matched at thresholds 0.50, 0.55 and (float rounding permitting) 0.60 of the ten
    assert 20.0 - 1e-9 <= res["AP"] <= 30.0 + 1e-9


def test_ap_wrong_class_scores_zero_unless_class_agnostic():
    preds = [segments((HEAD10, 1, 0.9), (HEAD10, 9, 0.8))]  # body on the head; 9 is no part id
    aware = ap([HEAD_ONLY], preds)
    assert aware["AP"] == 0.0 and aware["AP50"] == 0.0 and aware["predictions"] == 1  # the 9 is dropped
    agnostic = ap([HEAD_ONLY], preds, class_agnostic=True)
    assert agnostic["AP50"] == pytest.approx(100.0) and agnostic["predictions"] == 2
    assert [r["part"] for r in agnostic["per_part"]] == ["part"]


def test_ap_predictions_outside_objects_are_false_positives():
    empty_image = {"image_id": "none", "height": 10, "width": 10, "annotations": []}
    res = ap([HEAD_ONLY, empty_image], [segments((HEAD10, 0, 0.9)), segments((HEAD10, 0, 0.95))])
    # ranked: false positive (0.95), then the match (0.9): precision 1/2 at every recall level
    assert res["AP50"] == pytest.approx(50.0) and res["AR@100"] == pytest.approx(100.0)


def test_ap_without_predictions_or_ground_truth():
    res = ap([TWO_PARTS], [Prediction.empty(10, 10)])
    assert res["AP"] == 0.0 and res["AR@100"] == 0.0 and res["per_part"][0]["AP"] == 0.0
    res = ap([{"image_id": 0, "height": 10, "width": 10, "annotations": []}], [segments((HEAD10, 0, 0.9))])
    assert res["AP"] is None and res["AR@1"] is None and res["gt_instances"] == 0


def test_ap_rejects_predictions_of_another_size():
    with pytest.raises(ValueError, match="do not match"):
        ap([HEAD_ONLY], [Prediction.empty(5, 10)])


def test_ap_merge_of_two_halves_equals_all_at_once():
    rng = np.random.default_rng(2)
    records, noise = random_case(rng, 8)
    preds = []
    for r, p in zip(records, noise):  # each GT part with 15 % of its box's pixels flipped, some mislabelled
        parts = [(masks.decode(q["segmentation"]), q["category_id"]) for q in r["annotations"][0]["parts"]]
        noisy = [(m ^ (rng.random(m.shape) < 0.15), k if rng.random() < 0.8 else 1 - k, rng.random()) for m, k in parts]
        preds.append(segments(*noisy, (p.masks[0], 0, rng.random())))
    whole = ap(records, preds)
    a, b = PartAPEvaluator(META), PartAPEvaluator(META)
    a.process(records[:3], preds[:3])
    b.process(records[3:], preds[3:])
    a.merge(b.state())
    assert a.evaluate() == whole
    assert 0.0 < whole["AP"] < 100.0
