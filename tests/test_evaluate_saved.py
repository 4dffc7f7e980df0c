"""Scoring saved prediction files: format errors, the CLI, the stage, and the multirun summary table."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from partdistill.cli import main as cli
from partdistill.paths import CHECKOUT
from partdistill.data import catalog, masks, part_imagenet, synthetic
from partdistill.evaluation.predictions import PredictionError, group_by_image, read_predictions
from partdistill.evaluation.saved import evaluate_saved


@pytest.fixture
def synth_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=4, seed=0)
    part_imagenet.synthesize("part_imagenet", tmp_path / "datasets/part_imagenet", num_images=4, seed=0)
    part_imagenet.prepare_valtest(tmp_path / "datasets/part_imagenet")
    return tmp_path


def gt_predictions(records, label_offset=0, drop_first_part=False):
    """Each GT part as a predicted segment with label = its local index (+ offset): a perfect method."""
    out = []
    for r in records:
        for obj in r["annotations"]:
            for j, part in enumerate(obj["parts"]):
                if drop_first_part and j == 0:
                    continue
                out.append({"image_id": r["image_id"], "segmentation": part["segmentation"],
                            "label": j + label_offset, "score": 1.0 - 0.01 * j})
    return out


def write(path, preds, lines=False):
    path.write_text("\n".join(json.dumps(p) for p in preds) if lines else json.dumps(preds))
    return path


def test_perfect_predictions_score_100(synth_root, tmp_path):
    records = catalog.load("synthetic_val")
    preds = write(tmp_path / "p.jsonl", gt_predictions(records, label_offset=3), lines=True)
    res = evaluate_saved("synthetic_val", preds, tmp_path / "out")
    for key in ("C-mIoU", "A-mIoU", "C-mACC", "A-mIoPred", "AR@10", "AR-nonoverlap@200"):
        assert res[key] == pytest.approx(100.0), key
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["C-mIoU"] == pytest.approx(100.0) and metrics["dataset"] == "synthetic_val"
    assert (tmp_path / "out/per_class.csv").read_text().startswith("class,objects,mIoU")
    assert "| C-mIoU |" in (tmp_path / "out/summary.md").read_text()
    overlays = sorted((tmp_path / "out/overlays").glob("*.png"))
    assert len(overlays) == 4


def test_a_missed_part_lowers_the_score(synth_root, tmp_path):
    records = catalog.load("synthetic_val")
    preds = write(tmp_path / "p.json", gt_predictions(records, drop_first_part=True))
    res = evaluate_saved("synthetic_val", preds, tmp_path / "out", overlays=0)
    assert 0 < res["C-mIoU"] < 100 and res["A-mACC"] < 100
    assert res["AR@200"] == pytest.approx(200 / 3, abs=1)  # two of three parts per object found


def test_format_errors_name_the_record(synth_root, tmp_path):
    records = catalog.load("synthetic_val")
    good = gt_predictions(records)
    with pytest.raises(PredictionError, match="record 1 lacks \\['score'\\]"):
        read_predictions(write(tmp_path / "a.json", [good[0], {k: v for k, v in good[1].items() if k != "score"}]))
    with pytest.raises(PredictionError, match="record 0 has image_id '1' \\(str\\), which is not in the dataset"):
        group_by_image([{**good[0], "image_id": "1"}], records)
    small = {**good[0], "segmentation": masks.encode(np.zeros((10, 10), bool))}
    with pytest.raises(PredictionError, match="record 0 .* RLE of size \\[10, 10\\], but the image is \\[96, 128\\]"):
        group_by_image([small], records)
    with pytest.raises(PredictionError, match="neither a JSON list nor JSON Lines"):
        (tmp_path / "b.json").write_text("{oops")
        read_predictions(tmp_path / "b.json")


def test_cli_evaluate(synth_root, tmp_path, capsys):
    records = catalog.load("synthetic_val")
    preds = write(tmp_path / "p.json", gt_predictions(records))
    assert cli(["evaluate", "--dataset", "synthetic_val", "--predictions", str(preds), "--out", str(tmp_path / "o"),
                "--mapping", "hungarian"]) == 0
    assert "C-mIoU           100.00" in capsys.readouterr().out
    assert cli(["evaluate", "--dataset", "synthetic_val", "--predictions", str(tmp_path / "nope.json"),
                "--out", str(tmp_path / "o")]) == 2
    assert "prediction file" in capsys.readouterr().err


def test_match_split_must_share_the_object_classes(synth_root, tmp_path):
    val = write(tmp_path / "val.json", gt_predictions(catalog.load("part_imagenet_val")))
    test = write(tmp_path / "test.json", gt_predictions(catalog.load("part_imagenet_test")))
    with pytest.raises(PredictionError, match="different object classes"):
        evaluate_saved("part_imagenet_test", test, tmp_path / "o", match_dataset="part_imagenet_val",
                       match_predictions=val)
    res = evaluate_saved("part_imagenet_test", test, tmp_path / "o", match_dataset="part_imagenet_val",
                         match_predictions=val, object_class="supercategory", overlays=0)
    assert res["C-mIoU"] is not None


def test_multirun_over_suites_ends_in_one_summary_table(synth_root, tmp_path):
    for suite, name in (("synthetic", "synthetic_val"), ("part_imagenet", "part_imagenet_valtest")):
        write(tmp_path / f"{suite}.json", gt_predictions(catalog.load(name)))
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(CHECKOUT / "launch.py"), "-m", "stage=evaluate", "eval=synthetic,part_imagenet,pascal_parts",
         f"eval.predictions={tmp_path}/${{eval.suite}}.json", "eval.overlays=1", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=CHECKOUT, timeout=300,
    )
    # pascal_parts is not on disk: the sweep is refused as a whole before any job runs
    assert result.returncode == 2 and "pascal_parts: looked at" in result.stderr
    result = subprocess.run(
        [sys.executable, str(CHECKOUT / "launch.py"), "-m", "stage=evaluate", "eval=synthetic,part_imagenet",
         f"eval.predictions={tmp_path}/${{eval.suite}}.json", "eval.overlays=1", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=CHECKOUT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(r["status"], r["suite"], r["dataset"], r["overrides"]) for r in rows] == [
        ("ok", "synthetic", "synthetic_val", "eval=synthetic"),
        ("ok", "part_imagenet", "part_imagenet_valtest", "eval=part_imagenet")]
    assert all(r["C-mIoU"] == pytest.approx(100.0) for r in rows)
    assert "| job | status | suite | dataset | overrides | C-mIoU |" in result.stdout
    assert (sweep / "summary.md").is_file() and (sweep / "summary.csv").is_file()
    # a job that left no metrics is listed, not dropped
    (sweep / "1/metrics.json").unlink()
    assert cli(["report", str(sweep)]) == 0
    rows = json.loads((sweep / "summary.json").read_text())
    assert rows[1]["status"] == "failed" and rows[1]["log"].endswith("launch.log")


def test_identity_mapping_adds_supervised_miou_and_part_ap(synth_root, tmp_path):
    records = catalog.load("synthetic_val")
    meta = catalog.metadata("synthetic_val")
    preds = []
    for r in records:  # labels are the dataset's global part ids, as a supervised model predicts
        for obj in r["annotations"]:
            preds += [{"image_id": r["image_id"], "segmentation": p["segmentation"], "label": p["category_id"],
                       "score": 0.9} for p in obj["parts"]]
    res = evaluate_saved("synthetic_val", write(tmp_path / "p.json", preds), tmp_path / "o", mapping="identity",
                         overlays=0)
    assert len(meta.part_classes) == 12
    for key in ("C-mIoU", "mIoU", "AP50", "AP"):
        assert res[key] == pytest.approx(100.0), key
    assert res["AP-AR@100"] == pytest.approx(100.0) and res["AR@10"] == pytest.approx(100.0)
