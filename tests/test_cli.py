"""`partdistill data check`: one row per dataset, JSON, and the exit status of what the config needs."""
from __future__ import annotations

import json
import shutil

from partdistill.cli import main

REPORTED = ["imagenet_1k", "imagenet_22k", "part_imagenet", "pascal_parts", "cityscapes_part"]


def run_check(capsys, *args):
    status = main(["data", "check", *args])
    return status, capsys.readouterr().out


def test_json_rows_for_a_complete_root(root, capsys):
    status, out = run_check(capsys, "--json")
    rows = json.loads(out)
    assert status == 0
    assert [r["dataset"] for r in rows] == REPORTED
    for row in rows:
        assert {"dataset", "path", "status", "missing", "warnings"} <= set(row)
        assert row["status"] in ("ok", "warning") and row["missing"] == []
    assert rows[0]["path"] == str(root / "datasets/imagenet_1k")
    assert rows[0]["needed"] is True and rows[1]["needed"] is False


def test_table_names_every_dataset_and_the_root(root, capsys):
    status, out = run_check(capsys)
    assert status == 0
    assert f"$PART_DISTILLATION_ROOT={root}" in out
    for name in REPORTED:
        assert f"\n{name} " in out


def test_missing_needed_dataset_exits_non_zero(root, capsys):
    shutil.rmtree(root / "datasets/imagenet_22k")
    status, out = run_check(capsys, "--json")
    assert status == 0  # the default config trains on ImageNet-1K
    assert json.loads(out)[1]["status"] == "missing"
    status, out = run_check(capsys, "data=imagenet_22k")
    assert status == 1
    assert "Needed by this config and missing: imagenet_22k" in out


def test_warnings_are_reported(root, capsys):
    (root / "datasets/imagenet_22k").rename(root / "datasets/imagenet_21k")
    (root / "datasets/cityscapes_part/leftImg8bit").rename(root / "datasets/cityscapes_part/leftImage8bit")
    for name in ("valtest.json",):
        (root / "datasets/part_imagenet" / name).unlink()
    status, out = run_check(capsys, "--json", "data=imagenet_22k")
    rows = {r["dataset"]: r for r in json.loads(out)}
    assert status == 0
    assert rows["imagenet_22k"]["status"] == "warning" and rows["imagenet_22k"]["path"].endswith("imagenet_21k")
    assert rows["cityscapes_part"]["status"] == "warning"
    assert "partdistill data prepare part_imagenet" in rows["part_imagenet"]["warnings"][0]
    # valtest is needed once the part_imagenet suite is evaluated
    status, out = run_check(capsys, "--json", "stage=evaluate", "eval=part_imagenet")
    assert status == 1


def test_bad_override_is_a_clear_error(root, capsys):
    assert main(["data", "check", "data=imagenet_2k"]) == 2
    assert "cannot compose the config: In 'config': Could not find 'data/imagenet_2k'" in capsys.readouterr().err


def test_synth_writes_every_dataset_in_its_real_format(tmp_path, monkeypatch, capsys):
    from partdistill.data import catalog

    assert main(["data", "synth", "--out", str(tmp_path), "--images", "4"]) == 0
    assert f"export PART_DISTILLATION_ROOT={tmp_path}" in capsys.readouterr().out
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    status, out = run_check(capsys, "--json", "experiment=smoke", "stage=pipeline")
    rows = {r["dataset"]: r for r in json.loads(out)}
    assert status == 0 and all(r["missing"] == [] for r in rows.values())
    assert rows["part_imagenet"]["status"] == "ok"  # synth also prepares valtest
    for name in catalog.NAMES:  # every name loads, with annotations where the dataset has them
        records = catalog.load(name)
        assert records, name
        if not name.startswith("imagenet"):
            assert any(obj["parts"] for r in records for obj in r["annotations"]), name
    assert main(["data", "index", "imagenet_1k_train"]) == 0
    assert "imagenet_1k_train: 5 images in 5 classes" in capsys.readouterr().out
    assert main(["data", "index", "pascal_parts_val"]) == 2
    assert "only the ImageNet splits are indexed" in capsys.readouterr().err
