"""Prediction files are checked record by record: every bad value is one line naming the file, the record
index and the field, with exit status 2 and no traceback; an empty file is refused unless --allow-empty."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from partdistill.cli import main as cli
from partdistill.data import catalog, masks, synthetic
from partdistill.evaluation.predictions import PredictionError, read_predictions

DROP = object()  # with_record_1(key=DROP) deletes the key


@pytest.fixture
def good(tmp_path, monkeypatch):
    """Three valid records of the synthetic val split (images are 96 x 128)."""
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=4, seed=0)
    record = catalog.load("synthetic_val")[0]
    parts = [p for obj in record["annotations"] for p in obj["parts"]]
    return [{"image_id": record["image_id"], "segmentation": p["segmentation"], "label": j, "score": 0.9}
            for j, p in enumerate(parts[:3])]


def evaluate(tmp_path, capsys, text: str | bytes, *options: str) -> tuple[int, str]:
    """Runs `partdistill evaluate` on a file holding `text`; (exit status, stderr)."""
    path = tmp_path / "preds.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    status = cli(["evaluate", "--dataset", "synthetic_val", "--predictions", str(path),
                  "--out", str(tmp_path / "out"), "--overlays", "0", *options])
    return status, capsys.readouterr().err


def with_record_1(good: list[dict], **changes) -> str:
    """The good records as a JSON list, record 1 changed."""
    records = [dict(r) for r in good]
    for key, value in changes.items():
        if value is DROP:
            del records[1][key]
        else:
            records[1][key] = value
    return json.dumps(records)  # NaN and Infinity are written as JSON's usual extensions


def assert_one_line(status: int, err: str, *expected: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith("partdistill evaluate: ") and "preds.json" in err, err
    for text in expected:
        assert text in err, (text, err)


@pytest.mark.parametrize("text", ["", "  \n", "[]", "\n\n"], ids=["zero-bytes", "blank", "empty-list", "no-lines"])
def test_an_empty_file_is_refused_unless_allowed(good, tmp_path, capsys, text):
    assert_one_line(*evaluate(tmp_path, capsys, text), "no prediction records", "--allow-empty")
    status, err = evaluate(tmp_path, capsys, text, "--allow-empty")
    assert status == 0, err
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["AR@10"] == 0.0  # nothing predicted: every part missed


@pytest.mark.parametrize("score, shown", [
    (math.nan, "NaN"), (math.inf, "Infinity"), (None, "null"), ("0.9", '"0.9"'), (True, "true"), ([0.9], "[0.9]"),
], ids=["nan", "inf", "null", "string", "bool", "list"])
def test_a_score_that_is_not_a_finite_number_is_refused(good, tmp_path, capsys, score, shown):
    text = with_record_1(good, score=score)
    assert_one_line(*evaluate(tmp_path, capsys, text), "record 1", "'score'", shown, "finite number")


def test_a_score_too_large_for_a_float_is_refused(good, tmp_path, capsys):
    text = with_record_1(good, score=7).replace('"score": 7', '"score": 1' + "0" * 400)  # an int past float range
    assert_one_line(*evaluate(tmp_path, capsys, text), "record 1", "'score'", "finite number")


@pytest.mark.parametrize("label, expected", [
    (True, "true"), (1.0, "1.0"), ("1", '"1"'), (None, "null"), (-1, "-1"), (2**40, str(2**40)), (2**70, str(2**70)),
], ids=["bool", "float", "string", "null", "negative", "2^40", "2^70"])
def test_a_label_that_is_not_a_sane_int_is_refused(good, tmp_path, capsys, label, expected):
    text = with_record_1(good, label=label)
    assert_one_line(*evaluate(tmp_path, capsys, text), "record 1", "'label'", expected, "0..65535")


def test_a_2_40_label_is_refused_before_anything_is_sized_by_it(good, tmp_path):
    # on the unchecked path the mIoU evaluator pads its count table to label + 2 rows (128 TiB); the
    # check must stop the file when it is read, before any evaluator exists
    path = tmp_path / "p.json"
    path.write_text(with_record_1(good, label=2**40))
    with pytest.raises(PredictionError, match="record 1 field 'label'"):
        read_predictions(path)


def test_with_identity_mapping_labels_are_the_datasets_part_ids(good, tmp_path, capsys):
    # synthetic has 12 part classes: 12 is no part id, though it is a fine cluster id for majority mapping
    text = with_record_1(good, label=12)
    assert_one_line(*evaluate(tmp_path, capsys, text, "--mapping", "identity"), "record 1", "'label'", "0..11")
    assert evaluate(tmp_path, capsys, text)[0] == 0


@pytest.mark.parametrize("segmentation, expected", [
    ({"size": [96, 128], "counts": "garbage!!"}, "not a COCO RLE"),
    ({"size": [96, 128], "counts": "PPPP"}, "not a COCO RLE"),  # every char continues: the last number never ends
    ({"size": [96, 128], "counts": "é0"}, "not a COCO RLE"),
    ({"size": [96, 128], "counts": ""}, "cover 0 pixels, not 96 x 128 = 12288"),
    ({"size": [96, 128], "counts": [12288]}, "counts must be a string"),
    ({"size": [96, 128]}, "lacks 'counts'"),
    ({"size": "96x128", "counts": "0"}, "size must be [height, width]"),
    ({"size": [96.0, 128.0], "counts": "0"}, "size must be [height, width]"),
    ([[1, 2, 3, 4, 5, 6]], "COCO RLE object"),
], ids=["garbage", "unterminated", "non-ascii", "empty-counts", "uncompressed", "no-counts", "size-str",
        "size-float", "polygon"])
def test_a_segmentation_that_does_not_decode_is_refused(good, tmp_path, capsys, segmentation, expected):
    text = with_record_1(good, segmentation=segmentation)
    assert_one_line(*evaluate(tmp_path, capsys, text), "record 1", "'segmentation'", expected)


def test_an_rle_of_another_size_is_refused(good, tmp_path, capsys):
    # a mask of a 10 x 10 image: its size names the wrong image size ...
    small = masks.encode(np.ones((10, 10), bool))
    assert_one_line(*evaluate(tmp_path, capsys, with_record_1(good, segmentation=small)),
                    "record 1", "RLE of size [10, 10], but the image is [96, 128]")
    # ... or its size is the image's and its runs cover only 100 of its pixels: pycocotools would fill the
    # rest from uninitialised memory
    short = {"size": [96, 128], "counts": small["counts"]}
    assert_one_line(*evaluate(tmp_path, capsys, with_record_1(good, segmentation=short)),
                    "record 1", "cover 100 pixels, not 96 x 128 = 12288")


def test_other_record_errors_name_the_record(good, tmp_path, capsys):
    assert_one_line(*evaluate(tmp_path, capsys, with_record_1(good, image_id=True)), "record 1", "'image_id'")
    assert_one_line(*evaluate(tmp_path, capsys, json.dumps([good[0], [1, 2]])), "record 1 is not a JSON object")
    assert_one_line(*evaluate(tmp_path, capsys, with_record_1(good, label=DROP)),
                    "record 1 lacks ['label']")
    lines = "\n".join([json.dumps(good[0]), json.dumps(good[1]), "{oops"])
    assert_one_line(*evaluate(tmp_path, capsys, lines), "line 3", "JSON Lines")
    assert_one_line(*evaluate(tmp_path, capsys, b"[\xff]"),
                    "UTF-8")


def test_good_files_pass_in_both_formats(good, tmp_path, capsys):
    assert evaluate(tmp_path, capsys, json.dumps(good))[0] == 0
    assert evaluate(tmp_path, capsys, "\n".join(json.dumps(r) for r in good) + "\n")[0] == 0


def test_run_totals_match_pycocotools_on_real_masks():
    from partdistill.evaluation.predictions import rle_run_totals

    # the counts parser is checked against pycocotools' own encoder: the totals are the mask sizes
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (7, 3), (96, 128), (375, 500)]
    rles = [masks.encode(rng.random(s) < p) for s in shapes for p in (0.0, 0.01, 0.5, 1.0)]
    rles.append(masks.encode(np.tile([True, False], (300, 400))))  # long alternation: many numbers, deltas
    totals = rle_run_totals([r["counts"] for r in rles])
    assert totals.tolist() == [int(np.prod(r["size"])) for r in rles]
    assert rle_run_totals(["", "garbage!!", "0", "PPPP"]).tolist() == [0, -1, 0, -1]


def test_stage_evaluate_refuses_an_empty_file_unless_eval_allow_empty(good, tmp_path, compose_cfg):
    from partdistill import stages

    path = tmp_path / "empty.json"
    path.write_text("[]")
    overrides = ("experiment=smoke", "stage=evaluate", f"eval.predictions={path}", f"run_dir={tmp_path / 'run'}",
                 f"stage.out={tmp_path / 'out'}", "eval.overlays=0")
    with pytest.raises(PredictionError, match="eval.allow_empty=true for stage=evaluate"):
        stages.run(compose_cfg(*overrides))
    stages.run(compose_cfg(*overrides, "eval.allow_empty=true"))
    assert (tmp_path / "out" / "metrics.json").is_file()
