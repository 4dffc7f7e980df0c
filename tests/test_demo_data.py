"""The demo's own synthetic data: keyed by what made it, written on demand, refused when made otherwise;
and the random / oracle controls its report scores beside the method."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from partdistill import plan
from partdistill.data.missing import DatasetLayoutError
from partdistill.data import catalog, synthetic
from partdistill.data.layout import check_dataset
from partdistill.evaluation.controls import oracle_parts, random_cells
from partdistill.evaluation.saved import evaluate_saved
from partdistill.io import write_json_atomic


def test_demo_data_is_written_before_the_layout_check(empty_root, compose_cfg, capsys):
    cfg = compose_cfg("experiment=demo", "seed=3")
    assert cfg.data.name == "synthetic-s3-n64" and cfg.run_dir.endswith("runs/demo_s3")
    plan.preflight([cfg])  # writes it, then checks every dataset the pipeline reads
    assert "writing the synthetic data set synthetic-s3-n64 (seed 3, 64 images per split)" in capsys.readouterr().out
    train = catalog.load("synthetic-s3-n64_train")
    assert len(train) == 64
    # like ImageNet: one object per training image, of the image's class, every class in turn
    assert [len(r["annotations"]) for r in train] == [1] * 64
    assert [r["annotations"][0]["category_id"] for r in train[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert max(len(r["annotations"]) for r in catalog.load("synthetic-s3-n64_val")) == 2
    plan.preflight([cfg])  # a second run finds it and writes nothing
    assert "writing" not in capsys.readouterr().out


def test_seeds_give_different_data(empty_root):
    datasets = empty_root / "datasets"
    synthetic.ensure("synthetic-s0-n4", datasets)
    synthetic.ensure("synthetic-s1-n4", datasets)
    first, second = (np.asarray(Image.open(datasets / f"synthetic-s{s}-n4/train/000000.png")) for s in (0, 1))
    assert not np.array_equal(first, second)


def test_a_folder_made_otherwise_is_refused_with_the_fix(empty_root):
    datasets = empty_root / "datasets"
    synthetic.ensure("synthetic-s0-n4", datasets)
    folder = datasets / "synthetic-s0-n4"
    write_json_atomic(folder / "generation.json", {"generator": 1, "seed": 0, "images_per_split": 4})
    assert not synthetic.ensure("synthetic-s0-n4", datasets)  # never overwritten silently
    report = check_dataset("synthetic-s0-n4", datasets)
    assert report.missing and "was not made with the parameters" in report.missing[0]
    assert f"rm -r {folder}" in report.missing[0]
    with pytest.raises(DatasetLayoutError, match="Synthetic data"):
        catalog.load("synthetic-s0-n4_train")
    (folder / "generation.json").unlink()  # an older copy, from before the key was written
    assert "no readable generation.json" in check_dataset("synthetic-s0-n4", datasets).missing[0]


def test_controls_oracle_is_perfect_and_random_is_low(empty_root, tmp_path):
    synthetic.ensure("synthetic-s0-n12", empty_root / "datasets")
    records = [r for r in catalog.load("synthetic-s0-n12_val") if r["annotations"]]
    scores = {}
    for name, predictions in (("oracle", oracle_parts(records)), ("random", random_cells(records, 4, 0))):
        write_json_atomic(tmp_path / f"{name}.json", predictions)
        scores[name] = evaluate_saved("synthetic-s0-n12_val", tmp_path / f"{name}.json", tmp_path / name, overlays=0)
    assert scores["oracle"]["C-mIoU"] == pytest.approx(100.0)
    assert 10 < scores["random"]["C-mIoU"] < 60  # measured: about 40 with 3 parts per class
    # every object is covered by its cells, and the seed decides them
    assert random_cells(records, 4, 0) == random_cells(records, 4, 0) != random_cells(records, 4, 1)
    assert json.loads(json.dumps(random_cells(records[:1], 4, 0)))  # JSON-ready


def test_an_unknown_dataset_name_is_a_user_error(empty_root, capsys):
    from partdistill.errors import UserError

    with pytest.raises(UserError, match="unknown dataset 'synthetic-x'.*synthetic-s<seed>-n<images>"):
        check_dataset("synthetic-x", empty_root / "datasets")
