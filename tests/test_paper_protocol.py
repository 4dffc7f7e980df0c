"""Where partdistill's part mIoU and AR deliberately differ from the paper's evaluators, checked against a port
of them (paper_protocol.py): they agree wherever the paper's code has no defect, and differ as README.md says."""
from __future__ import annotations

import numpy as np
import pytest
from evalcases import META, record
from paper_protocol import (
    ar_at_1,
    paper_proposal_order,
    paper_scores,
    partdistill_scores,
    random_case,
)

from partdistill.data.catalog import Metadata
from partdistill.data.records import object_record, part_record
from partdistill.evaluation.part_miou import PartMIoUEvaluator
from partdistill.evaluation.samples import Prediction


def test_a_label_on_no_part_is_background_here_and_part_0_in_the_paper():
    # A car (parts wheel 2, window 3, door 4 of META; global part 0 is the cat's head), 2 x 3 pixels:
    #   wheel wheel window     predicted   0 0 1
    #   none  none  none       predicted   2 2 2
    # Labels 0 and 1 cover wheel and window exactly. Label 2 lies only on object pixels in no part, so
    # its row of overlaps with the car's parts is all zero.
    # partdistill: label 2 -> background; wheel IoU 2/2 = 100, window 1/1 = 100, door has neither GT nor
    #   prediction and is left out: car mIoU (100 + 100) / 2 = 100.
    # paper: argmax of the zero row -> global part 0 (head). In the car's matrix head then has 3 predicted
    #   pixels and no GT: it adds 0 to the sum and 1 to the count: (100 + 100 + 0) / 3 = 66.67.
    car, wheel, window = np.ones((2, 3), bool), np.zeros((2, 3), bool), np.zeros((2, 3), bool)
    wheel[0, :2], window[0, 2] = True, True
    rec = record(0, [(1, car, [(2, wheel), (3, window)])], (2, 3))
    labels = np.array([0, 1, 2])
    pred = Prediction(np.stack([wheel, window, ~wheel & ~window]), labels, np.ones(3, np.float32))
    assert partdistill_scores(META, [rec], [pred])["C-mIoU"] == pytest.approx(100.0)
    assert paper_scores(META, [rec], [pred])["C-mIoU"] == pytest.approx(200 / 3)


def test_the_port_agrees_where_every_label_touches_a_part():
    # every class's extra cluster also falls on its parts (leak=1), so no row of overlaps is zero: the
    # mappings agree, and with A-mIoU indexed over every part (as PartImageNet's registration names them)
    # so do all the means
    meta, records, predictions = random_case(0, leak=1.0)
    counts = PartMIoUEvaluator(meta)
    counts.process(records, predictions)
    used, on_parts = counts.counts[:, 1:].sum(axis=2), counts.counts[:, 1:, :3].sum(axis=2)  # [class, label]
    assert ((used == 0) | (on_parts > 0)).all()  # the premise: each label a class uses touches its parts
    ours = partdistill_scores(meta, records, predictions)
    paper = paper_scores(meta, records, predictions, thing_classes=list(meta.part_classes))
    for key in ("C-mIoU", "A-mIoU", "C-mACC", "A-mACC", "C-mIoPred", "A-mIoPred"):
        assert paper[key] == pytest.approx(ours[key]), key
    # where a class's extra cluster lands on no part (leak=0: every class), the paper's rule scores lower
    meta, records, predictions = random_case(0, leak=0.0)
    assert paper_scores(meta, records, predictions)["C-mIoU"] < partdistill_scores(meta, records, predictions)["C-mIoU"] - 5


def test_a_mious_indexing_defect_covers_only_the_parts_numbered_below_the_object_count():
    meta, records, predictions = random_case(0, leak=1.0)  # no label on no part: only the indexing differs
    ours = partdistill_scores(meta, records, predictions)
    every = {p["part"]: p["IoU"] for p in ours["per_part"]}
    # with the object names (5) as its registration gives for Pascal-Part and Cityscapes, the paper's A-mIoU
    # is the mean over global parts 0..4 only: object0's three parts and object1's first two
    first_five = [every[name] for name in meta.part_classes[:5] if every[name] is not None]
    paper = paper_scores(meta, records, predictions, thing_classes=list(meta.thing_classes))
    assert paper["A-mIoU"] == pytest.approx(np.mean(first_five))
    assert ours["A-mIoU"] == pytest.approx(np.mean([v for v in every.values() if v is not None]))


def test_tied_scores_keep_the_file_order_here_and_not_in_the_papers_sort():
    # 30 proposals all scoring 1.0; only the first is a part (the left half). Ranked stably, it is the top
    # one: AR@1 = 1 of 2 parts matched at IoU 1 = 50. torch's sort, as the paper ranks, puts another first.
    meta = Metadata(["thing"], ["left", "right"], {0: [0, 1]})
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    rec = {"image_id": 0, "height": 4, "width": 4,
           "annotations": [object_record(0, np.ones((4, 4), bool), [part_record(0, left), part_record(1, ~left)])]}
    boxes = np.zeros((30, 4, 4), bool)
    boxes[0], boxes[1:, 0, 0] = left, True  # the others: one pixel, IoU 1/8 with the left part
    scores = np.ones(30, np.float32)
    assert paper_proposal_order(scores)[0] != 0  # the premise: torch's sort does not keep ties in order here
    prediction = Prediction(boxes, np.zeros(30, np.int64), scores)
    assert ar_at_1(meta, [rec], [prediction], paper_order=False) == pytest.approx(50.0)
    assert ar_at_1(meta, [rec], [prediction], paper_order=True) == 0.0
