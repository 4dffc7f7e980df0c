"""Layout checks on tiny on-disk layouts, each with one item broken at a time."""
from __future__ import annotations

import shutil

import pytest

from layouts import WNIDS, make_cityscapes_part, make_imagenet_22k, make_part_imagenet
from partdistill.data.layout import DATASETS, check_dataset


def test_complete_layouts_have_nothing_missing(root):
    for name in DATASETS:
        report = check_dataset(name, root / "datasets")
        assert report.missing == [], name
    # a tiny ImageNet-1K is usable, but says it is not the full dataset
    report = check_dataset("imagenet_1k", root / "datasets")
    assert report.status == "warning"
    assert any("3 class folders, the full dataset has 1000" in w for w in report.warnings)
    assert report.found == ["train: 3 classes", "val: 3 classes"]


def test_missing_root(tmp_path):
    report = check_dataset("pascal_parts", tmp_path / "nowhere" / "datasets")
    assert report.status == "missing"
    assert report.missing == [f"{tmp_path}/nowhere/datasets/ (the dataset root folder does not exist)"]


def test_missing_dataset_folder(root):
    shutil.rmtree(root / "datasets/pascal_parts")
    report = check_dataset("pascal_parts", root / "datasets")
    assert report.missing == [f"{root}/datasets/pascal_parts/ (dataset folder)"]


@pytest.mark.parametrize(
    "dataset, remove, expected",
    [
        ("imagenet_1k", "val", "imagenet_1k/val/ (folder of class folders"),
        ("cityscapes_part", "gtFinePanopticParts/val", "cityscapes_part/gtFinePanopticParts/val/ (folder of city"),
        ("pascal_parts", "images/ImageSets/Main/val.txt", "pascal_parts/images/ImageSets/Main/val.txt (VOC split list)"),
        ("part_imagenet", "test.json", "part_imagenet/test.json (COCO-style annotation file)"),
        ("pascal_parts", "annotations", "pascal_parts/annotations/ (folder of Pascal-Part .mat files)"),
        ("synthetic", "train.json", "synthetic/train.json (COCO-style annotation file)"),
    ],
)
def test_missing_split_or_annotation(root, dataset, remove, expected):
    target = root / "datasets" / dataset / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    report = check_dataset(dataset, root / "datasets")
    assert report.status == "missing"
    assert [m for m in report.missing if m.startswith(f"{root}/datasets/{expected}")], report.missing


def test_empty_class_folders(root):
    for folder in (root / "datasets/imagenet_1k/train").iterdir():
        for f in folder.iterdir():
            f.unlink()
    report = check_dataset("imagenet_1k", root / "datasets")
    assert len(report.missing) == 3
    assert report.missing[0].startswith(f"{root}/datasets/imagenet_1k/train/n01440764/ (class folder has no")
    assert "3 of 3 sampled class folders are empty" in report.missing[0]


def test_no_class_folders(root):
    shutil.rmtree(root / "datasets/imagenet_22k")
    (root / "datasets/imagenet_22k").mkdir()
    report = check_dataset("imagenet_22k", root / "datasets")
    assert report.missing == [f"{root}/datasets/imagenet_22k/n########/ (no class folders named by WordNet id)"]


def test_broken_symlinks(root, tmp_path):
    shutil.rmtree(root / "datasets/imagenet_1k")
    (root / "datasets/imagenet_1k").symlink_to(tmp_path / "gone")
    report = check_dataset("imagenet_1k", root / "datasets")
    assert report.missing == [f"{root}/datasets/imagenet_1k (dataset folder; a broken symlink to {tmp_path}/gone)"]
    # a broken link deeper inside is named as such too
    (root / "datasets/part_imagenet/val.json").unlink()
    (root / "datasets/part_imagenet/val.json").symlink_to(tmp_path / "val.json")
    report = check_dataset("part_imagenet", root / "datasets")
    assert any("val.json (COCO-style annotation file; a broken symlink to" in m for m in report.missing)


def test_imagenet_21k_alias(root):
    shutil.rmtree(root / "datasets/imagenet_22k")
    make_imagenet_22k(root / "datasets/imagenet_21k")
    report = check_dataset("imagenet_22k", root / "datasets")
    assert report.status == "warning"
    assert report.path == root / "datasets/imagenet_21k"
    assert "imagenet_21k is accepted for imagenet_22k" in report.warnings[0]


def test_empty_imagenet_22k_names_the_imagenet_21k_beside_it(root):
    make_imagenet_22k(root / "datasets/imagenet_21k")
    shutil.rmtree(root / "datasets/imagenet_22k")
    (root / "datasets/imagenet_22k").mkdir()
    report = check_dataset("imagenet_22k", root / "datasets")
    assert report.status == "missing" and report.path == root / "datasets/imagenet_22k"
    assert any(f"{root}/datasets/imagenet_21k holds 3 class folders but is not used" in w for w in report.warnings)


def test_symlink_loops_do_not_stop_the_check(root):
    train = root / "datasets/imagenet_1k/train"
    (train / "n09999999").symlink_to("n09999999")  # a class folder that loops
    for image in (train / WNIDS[0]).iterdir():
        image.unlink()
    (train / WNIDS[0] / "loop.JPEG").symlink_to("loop.JPEG")  # a sampled folder that holds only a loop
    report = check_dataset("imagenet_1k", root / "datasets")
    assert f"{train}/n09999999: a symlink loop (skipped)" in report.warnings
    assert f"{train / WNIDS[0]}/loop.JPEG: a symlink loop (skipped)" in report.warnings
    assert report.found[0] == "train: 3 classes"
    assert [m for m in report.missing if m.startswith(f"{train / WNIDS[0]}/ (class folder has no")]


def test_a_split_list_that_is_not_text_is_named(root):
    split_list = root / "datasets/pascal_parts/images/ImageSets/Main/val.txt"
    split_list.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    report = check_dataset("pascal_parts", root / "datasets")
    assert [m for m in report.missing if m.startswith(f"{split_list} (VOC split list; not UTF-8 text:")]


def test_left_image_8bit_alias(root):
    shutil.rmtree(root / "datasets/cityscapes_part")
    make_cityscapes_part(root / "datasets/cityscapes_part", image_dir="leftImage8bit")
    report = check_dataset("cityscapes_part", root / "datasets")
    assert report.status == "warning"
    assert "leftImage8bit for leftImg8bit" in report.warnings[0]


def test_valtest_is_a_warning_until_required(root):
    shutil.rmtree(root / "datasets/part_imagenet")
    make_part_imagenet(root / "datasets/part_imagenet", valtest=False)
    report = check_dataset("part_imagenet", root / "datasets")
    assert report.status == "warning"
    assert "run `partdistill data prepare part_imagenet`" in report.warnings[0]
    report = check_dataset("part_imagenet", root / "datasets", splits=["valtest"])
    assert report.status == "missing"
    assert any("valtest.json" in m and "partdistill data prepare part_imagenet" in m for m in report.missing)


def test_part_imagenet_json_in_annotations_folder_names_the_fix(root):
    base = root / "datasets/part_imagenet"
    (base / "annotations").mkdir()
    (base / "train.json").rename(base / "annotations/train.json")
    report = check_dataset("part_imagenet", root / "datasets")
    assert report.missing == [
        f"{base}/train.json (COCO-style annotation file); found {base}/annotations/train.json: "
        f"run `ln -s annotations/train.json {base}/train.json`"
    ]


def test_unknown_dataset(root):
    with pytest.raises(KeyError, match="known datasets"):
        check_dataset("imagenet_2k", root / "datasets")
