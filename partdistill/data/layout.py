"""Layout checks of the five datasets (and the synthetic one) under `<root>/datasets/`.

The checks are cheap by design (`folders.Checker`): they stat the files and folders a dataset must
have, count class folders with one `os.scandir`, and look into a few sampled folders for one file.
They never walk a dataset, so they take well under a second even for ImageNet-22K on shared storage.
Each missing item is reported as the exact absolute path that was looked for.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from partdistill.data.folders import WNID, Checker
from partdistill.data.planted import GENERATOR
from partdistill.errors import UnknownDataset

# a synthetic data set keyed by how it was made: `synthetic-s<seed>-n<images per split>`, written on demand
KEYED_SYNTHETIC = re.compile(r"^synthetic-s(\d+)-n(\d+)$")
GENERATION_FILE = "generation.json"

# datasets/README.md section of each dataset: where a user reads how to obtain and place it
SECTIONS = {
    "imagenet_1k": "ImageNet-1K",
    "imagenet_22k": "ImageNet-22K",
    "part_imagenet": "PartImageNet",
    "pascal_parts": "Pascal-Part",
    "cityscapes_part": "Cityscapes-Panoptic-Parts",
    "synthetic": "Synthetic data",
}
# splits every check requires; others (PartImageNet's valtest) are required only when asked for
DEFAULT_SPLITS = {
    "imagenet_1k": ("train", "val"),
    "imagenet_22k": (),
    "part_imagenet": ("train", "val", "test"),
    "pascal_parts": ("train", "val"),
    "cityscapes_part": ("train", "val"),
    "synthetic": ("train", "val"),
}
PREPARE_VALTEST = "partdistill data prepare part_imagenet"


def section_anchor(title: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


@dataclass
class LayoutReport:
    """What a check found for one dataset; `missing` makes it unusable, `warnings` do not."""

    dataset: str
    path: Path
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "missing" if self.missing else "warning" if self.warnings else "ok"

    @property
    def section(self) -> str:
        return SECTIONS[family(self.dataset)]

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "path": str(self.path),
            "status": self.status,
            "missing": list(self.missing),
            "warnings": list(self.warnings),
            "found": list(self.found),
        }


def _locate(datasets_root: Path, names: Sequence[str], report_name: str) -> LayoutReport:
    """The report for the first of `names` present under the root (aliases warn)."""
    for name in names:
        path = datasets_root / name
        if path.exists():
            report = LayoutReport(report_name, path)
            if name != names[0]:
                report.warnings.append(f"using {path} for {report_name} ({name} is accepted for {names[0]})")
            return report
    return LayoutReport(report_name, datasets_root / names[0])


def _check_imagenet_1k(c: Checker, splits: Iterable[str]) -> None:
    for split in splits:
        n = c.class_folders(split, expected=1000)
        c.report.found.append(f"{split}: {n} classes")


def _check_imagenet_22k(c: Checker, splits: Iterable[str]) -> None:
    n = c.class_folders(".")
    c.report.found.append(f"{n} classes")
    if not any((c.base / f).is_file() for f in ("synsets.dat", "words.txt")):
        c.report.warnings.append(f"{c.base}: neither synsets.dat nor words.txt (class names) is present")
    for split in splits:  # ImageNet-22K has no split folders: "train" is all of it, nothing else exists
        if split != "train":
            c.folder(split)
    # an alias folder beside the one used is never looked at: an empty imagenet_22k/ would hide a full imagenet_21k/
    for alias in _FOLDER_NAMES[c.report.dataset]:
        other = c.base.parent / alias
        if other != c.base and other.is_dir():
            count = len(Checker(LayoutReport(c.report.dataset, other)).subfolders(other, WNID))
            if count:
                c.report.warnings.append(
                    f"{other} holds {count} class folders but is not used: {c.base} is looked at first; "
                    f"remove or rename {c.base.name}/ to use {alias}/")


def _part_imagenet_json_hint(c: Checker, split: str) -> str:
    """Where the official archive may have put <split>.json, as the command that fixes it."""
    for rel in (f"annotations/{split}.json", f"annotations/{split}/{split}.json", f"jsons/{split}.json"):
        if (c.base / rel).is_file():
            return f"; found {c.base / rel}: run `ln -s {rel} {c.base / split}.json`"
    return ""


def _check_part_imagenet(c: Checker, splits: Iterable[str]) -> None:
    for split in splits:
        fix = f"; create it with `{PREPARE_VALTEST}`" if split == "valtest" else ""
        if c.file(f"{split}.json", "COCO-style annotation file" + fix) is None and not fix:
            c.report.missing[-1] += _part_imagenet_json_hint(c, split)
        n = c.class_folders(split)
        if n:
            c.report.found.append(f"{split}: {n} classes")
    if "valtest" not in splits and not (c.base / "valtest.json").is_file():
        c.report.warnings.append(f"valtest (val + test merged) not created yet: run `{PREPARE_VALTEST}`")


def _check_pascal_parts(c: Checker, splits: Iterable[str]) -> None:
    images = c.folder("images/JPEGImages", "VOC image folder")
    if images is not None and not c.has_file(images, (".jpg",)):
        c.report.missing.append(f"{images}/*.jpg (the image folder is empty)")
    for split in splits:
        ids = c.file(f"images/ImageSets/Main/{split}.txt", "VOC split list")
        if ids is not None:
            try:  # read as pascal_parts.split_ids reads it: a garbled list is named here, before any load
                count = sum(1 for line in ids.read_text(encoding="utf-8").splitlines() if line.strip())
            except UnicodeDecodeError as error:
                c.report.missing.append(f"{ids} (VOC split list; not UTF-8 text: {error})")
                continue
            c.report.found.append(f"{split}: {count} ids")
    annotations = c.folder("annotations", "folder of Pascal-Part .mat files")
    if annotations is not None and not c.has_file(annotations, (".mat",)):
        c.report.missing.append(f"{annotations}/*.mat (the annotation folder is empty)")


def _check_cityscapes_part(c: Checker, splits: Iterable[str]) -> None:
    image_dir = "leftImg8bit"
    if not (c.base / image_dir).exists() and (c.base / "leftImage8bit").exists():
        image_dir = "leftImage8bit"
        c.report.warnings.append(f"using {c.base / image_dir} for leftImg8bit (the official folder name)")
    for split in splits:
        for rel, suffix in ((f"gtFinePanopticParts/{split}", ".tif"), (f"{image_dir}/{split}", ".png")):
            folder = c.folder(rel, "folder of city folders")
            if folder is None:
                continue
            cities = c.subfolders(folder)
            if not cities:
                c.report.missing.append(f"{folder}/<city>/ (no city folders)")
            else:
                c.sampled_nonempty(folder, cities, (suffix,), "city folder")
                if suffix == ".tif":
                    c.report.found.append(f"{split}: {len(cities)} cities")


def _check_synthetic(c: Checker, splits: Iterable[str]) -> None:
    for split in splits:
        c.file(f"{split}.json", "COCO-style annotation file")
        c.folder(split, "image folder")
    key = KEYED_SYNTHETIC.match(c.report.dataset)
    if key is None:
        return
    wanted = generation(int(key.group(2)), int(key.group(1)))
    path = c.base / GENERATION_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = None
    if found != wanted:
        made = f"it says {found}" if found is not None else f"it has no readable {GENERATION_FILE}"
        c.report.missing.append(
            f"{c.base}/ was not made with the parameters its name stands for ({made}; the name needs {wanted}): "
            f"an older or incomplete copy. Remove it (rm -r {c.base}) and run again: it is written anew")


def generation(num_images: int, seed: int) -> dict:
    """What made a synthetic data set (written to its generation.json): equal entries, equal data."""
    return {"generator": GENERATOR, "seed": int(seed), "images_per_split": int(num_images)}


    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0])


def family(dataset: str) -> str:
    """The kind of a dataset name: itself, or `synthetic` for a keyed synthetic set."""
    if dataset in _CHECKS:
        return dataset
    if KEYED_SYNTHETIC.match(dataset):
        return "synthetic"
    raise UnknownDataset(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)} and "
                         f"synthetic-s<seed>-n<images> (the synthetic set made from that seed and size)")


_CHECKS: dict[str, Callable[[Checker, Iterable[str]], None]] = {
    "imagenet_1k": _check_imagenet_1k,
    "imagenet_22k": _check_imagenet_22k,
    "part_imagenet": _check_part_imagenet,
    "pascal_parts": _check_pascal_parts,
    "cityscapes_part": _check_cityscapes_part,
    "synthetic": _check_synthetic,
}
DATASETS = tuple(_CHECKS)
# folder names accepted for a dataset, the documented one first
_FOLDER_NAMES = {"imagenet_22k": ("imagenet_22k", "imagenet_21k")}


def check_dataset(name: str, datasets_root: Path, splits: Sequence[str] = (), only: bool = False) -> LayoutReport:
    """Checks one dataset's layout under `datasets_root` (`<root>/datasets`).

    Args:
        name (str): one of DATASETS.
        datasets_root (Path): the folder that holds the dataset folders.
        splits (Sequence[str]): splits required beyond the dataset's defaults (e.g. "valtest").
        only (bool): require `splits` alone, not the defaults too (a run checks only what it reads).
    """
    kind = family(name)
    report = _locate(datasets_root, _FOLDER_NAMES.get(name, (name,)), name)
    checker = Checker(report)
    if not datasets_root.is_dir():
        report.missing.append(f"{datasets_root}/ (the dataset root folder does not exist)")
        return report
    if checker.folder(".", "dataset folder") is None:
        return report
    wanted = list(dict.fromkeys(splits)) if only else (
        list(DEFAULT_SPLITS[kind]) + [s for s in splits if s not in DEFAULT_SPLITS[kind]])
    _CHECKS[kind](checker, wanted)
    return report
