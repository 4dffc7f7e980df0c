"""Minimal on-disk layouts of each dataset: the files and folders the layout checks look for.

The files are empty: the checks stat them and never open them.
"""
from __future__ import annotations

from pathlib import Path

WNIDS = ("n01440764", "n01443537", "n01484850")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _classes(folder: Path, stem: str = "") -> None:
    for wnid in WNIDS:
        _touch(folder / wnid / f"{wnid}_{stem or '1'}.JPEG")


def make_imagenet_1k(base: Path) -> None:
    for split in ("train", "val"):
        _classes(base / split)


def make_imagenet_22k(base: Path) -> None:
    _classes(base)
    (base / "words.txt").write_text("".join(f"{w}\tname\n" for w in WNIDS))


def make_part_imagenet(base: Path, valtest: bool = True) -> None:
    for split in ("train", "val", "test") + (("valtest",) if valtest else ()):
        _touch(base / f"{split}.json")
        _classes(base / split)


def make_pascal_parts(base: Path) -> None:
    _touch(base / "images/JPEGImages/2008_000001.jpg")
    for split in ("train", "val"):
        (base / "images/ImageSets/Main").mkdir(parents=True, exist_ok=True)
        (base / f"images/ImageSets/Main/{split}.txt").write_text("2008_000001\n")
    _touch(base / "annotations/2008_000001.mat")


def make_cityscapes_part(base: Path, image_dir: str = "leftImg8bit") -> None:
    for split in ("train", "val"):
        _touch(base / f"gtFinePanopticParts/{split}/aachen/aachen_000000_000019_gtFinePanopticParts.tif")
        _touch(base / f"{image_dir}/{split}/aachen/aachen_000000_000019_leftImg8bit.png")


def make_synthetic(base: Path) -> None:
    for split in ("train", "val"):
        _touch(base / f"{split}.json")
        _touch(base / split / "000000.png")


MAKERS = {
    "imagenet_1k": make_imagenet_1k,
    "imagenet_22k": make_imagenet_22k,
    "part_imagenet": make_part_imagenet,
    "pascal_parts": make_pascal_parts,
    "cityscapes_part": make_cityscapes_part,
    "synthetic": make_synthetic,
}


def make_all(root: Path) -> Path:
    """Every dataset under `root/datasets`; returns `root`."""
    for name, make in MAKERS.items():
        make(root / "datasets" / name)
    return root
