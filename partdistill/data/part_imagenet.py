"""PartImageNet (OOD release): COCO-style part polygons, one object per image, and the `valtest` split.

The object of an image is the union of its parts; its class is the image's ImageNet synset (from the
file name), as the paper's code does, with the supercategory (which defines the part set) kept
beside it. Part classes are the JSON's 40 categories with their names as the file gives them (the
release's already carry the supercategory: "Quadruped Head").

A split's JSON that cannot be read, or whose `images`, `annotations` or `categories` are not lists of
usable entries, stops the load naming the file (`AnnotationFileError`); a single unusable image entry
or annotation (degenerate polygon, unknown category) is skipped and counted.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from partdistill.data import coco, planted
from partdistill.data.catalog import Metadata
from partdistill.data.folders import image_mismatch
from partdistill.data.records import SkipLog, object_record, part_record
from partdistill.errors import AnnotationFileError, PrepareError
from partdistill.io import write_json_atomic

# the release's 11 supercategories and their parts, in category-id order (40 parts in all)
TAXONOMY = {
    "Quadruped": ["Head", "Body", "Foot", "Tail"],
    "Biped": ["Head", "Body", "Hand", "Foot", "Tail"],
    "Fish": ["Head", "Body", "Fin", "Tail"],
    "Bird": ["Head", "Body", "Wing", "Foot", "Tail"],
    "Snake": ["Head", "Body"],
    "Reptile": ["Head", "Body", "Foot", "Tail"],
    "Car": ["Body", "Tier", "Side Mirror"],
    "Bicycle": ["Body", "Head", "Seat", "Tier"],
    "Boat": ["Body", "Sail"],
    "Aeroplane": ["Head", "Body", "Wing", "Engine", "Tail"],
    "Bottle": ["Body", "Mouth"],
}
# synsets of the synthetic copy: disjoint classes per split, as in the OOD release
SYNTH_SYNSETS = {
    "train": {"n02085620": "Quadruped", "n02480495": "Biped", "n01440764": "Fish", "n01530575": "Bird",
              "n01728572": "Snake", "n01664065": "Reptile"},
    "val": {"n02085782": "Quadruped", "n01443537": "Fish", "n03100240": "Car", "n02835271": "Bicycle"},
    "test": {"n01531178": "Bird", "n04273569": "Boat", "n02690373": "Aeroplane", "n02823428": "Bottle"},
}


def wnid_of(file_name: str) -> str:
    return Path(file_name).name.split("_")[0]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no id


def read_split(path: Path) -> dict:
    """A split's JSON with its top-level lists and categories checked; AnnotationFileError otherwise."""
    try:
        data = coco.read_json(path)
    except (OSError, ValueError, TypeError) as error:  # unreadable, not JSON, not UTF-8, not an object
        message = str(error)
        raise AnnotationFileError(message if str(path) in message else f"{path}: cannot be read ({message})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise AnnotationFileError(f"{path}: {key!r} is a {type(data[key]).__name__}, not a list; "
                                      "is it a PartImageNet annotation file?")
    for c in data["categories"]:
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)
                and isinstance(c.get("supercategory"), str)):
            raise AnnotationFileError(f"{path}: category {c!r} lacks an integer id, a name or a supercategory")
    if len({c["id"] for c in data["categories"]}) != len(data["categories"]):
        raise AnnotationFileError(f"{path}: two categories share an id")
    return data


def _usable(data: dict, json_path: Path, skipped: SkipLog) -> tuple[list[dict], dict[int, list[dict]]]:
    """(image entries sorted by id, annotations by image id) that can be used; the others go to `skipped`."""
    images, seen = [], set()
    for n, img in enumerate(data["images"]):
        ok = isinstance(img, dict) and _is_int(img.get("id")) and isinstance(img.get("file_name"), str)
        if not ok or not all(_is_int(img.get(k)) and img[k] > 0 for k in ("height", "width")) or img["id"] in seen:
            skipped.add(f"{json_path}#images[{n}]", "not an image entry with a new integer id, a file_name and "
                        "positive integer height and width")
            continue
        seen.add(img["id"])
        images.append(img)
    known = {c["id"] for c in data["categories"]}
    annotations = []
    for n, ann in enumerate(data["annotations"]):
        if not (isinstance(ann, dict) and _is_int(ann.get("image_id")) and _is_int(ann.get("category_id"))
                and "segmentation" in ann):
            skipped.add(f"{json_path}#annotations[{n}]", "not an annotation with integer image_id and "
                        "category_id and a segmentation")
        elif ann["category_id"] not in known:
            skipped.add(f"{json_path}#annotation-{ann.get('id')}",
                        f"category_id {ann['category_id']} is not in the file's categories")
        elif ann["image_id"] in seen:  # annotations of a skipped image are left out with it
            annotations.append(ann)
    return sorted(images, key=lambda img: img["id"]), coco.annotations_by_image({"annotations": annotations})


def _part_classes(data: dict) -> tuple[list[dict], dict[int, int]]:
    categories = sorted(data["categories"], key=lambda c: c["id"])
    return categories, {c["id"]: i for i, c in enumerate(categories)}


def load(dataset: str, base: Path, split: str, root: Path) -> list[dict]:
    json_path = base / f"{split}.json"
    data = read_split(json_path)
    categories, part_index = _part_classes(data)
    skipped = SkipLog(f"{dataset}_{split}")
    images, annotations = _usable(data, json_path, skipped)
    wnids = sorted({wnid_of(img["file_name"]) for img in images})
    class_index = {w: i for i, w in enumerate(wnids)}
    records = []
    for image in images:
        wnid, height, width = wnid_of(image["file_name"]), image["height"], image["width"]
        path = base / split / wnid / image["file_name"]
        mismatch = image_mismatch(path, height, width)
        if mismatch is not None:
            skipped.add(path, f"image {mismatch} (listed in {json_path.name}, image id {image['id']})")
            continue
        parts: dict[int, np.ndarray] = {}  # merged per part class, as the evaluation expects
        for ann in annotations.get(image["id"], []):
            try:
                mask = coco.segmentation_mask(ann["segmentation"], height, width)
                if mask.shape != (height, width):  # an RLE's own size
                    raise ValueError(f"a {mask.shape[0]}x{mask.shape[1]} mask in a {height}x{width} image")
            except (ValueError, TypeError, KeyError) as exc:  # the release has a few degenerate polygons
                skipped.add(f"{json_path}#annotation-{ann.get('id')}",
                            f"empty, degenerate or malformed segmentation ({type(exc).__name__}: {exc})")
                continue
            cat = part_index[ann["category_id"]]
            parts[cat] = parts[cat] | mask if cat in parts else mask
        annotations_out = []
        if parts:
            obj_mask = np.logical_or.reduce(list(parts.values()))
            part_records = [part_record(c, m, source_id=categories[c]["id"]) for c, m in sorted(parts.items())]
            supercategory = categories[min(parts)]["supercategory"]
            annotations_out.append(
                object_record(class_index[wnid], obj_mask, part_records, wnid=wnid, supercategory=supercategory)
            )
        records.append({"file_name": str(path), "height": height, "width": width, "image_id": image["id"],
                        "annotations": annotations_out})
    skipped.report()
    return records


def metadata(dataset: str, base: Path, split: str, root: Path) -> Metadata:
    data = read_split(base / f"{split}.json")
    categories, part_index = _part_classes(data)
    # what load() skips is left out here too (and named by load, not twice)
    images, annotations = _usable(data, base / f"{split}.json", SkipLog(f"{dataset}_{split}"))
    wnids = sorted({wnid_of(img["file_name"]) for img in images})
    supercategory_of = {}
    for img in images:
        for ann in annotations.get(img["id"], []):
            category = categories[part_index[ann["category_id"]]]
            supercategory_of.setdefault(wnid_of(img["file_name"]), category["supercategory"])
    parts_of_super = {}
    for i, c in enumerate(categories):
        parts_of_super.setdefault(c["supercategory"], []).append(i)
    supers = [supercategory_of.get(w, "") for w in wnids]
    return Metadata(
        thing_classes=wnids,
        part_classes=[c["name"] for c in categories],
        parts_of={i: parts_of_super.get(s, []) for i, s in enumerate(supers)},
        extra={"wnids": wnids, "supercategory_of": supers, "supercategories": list(parts_of_super)},
    )


def categories() -> list[dict]:
    """The release's 40 categories: ids 0-39, each name carrying its supercategory ("Quadruped Head")."""
    cats = [(s, p) for s, parts in TAXONOMY.items() for p in parts]
    return [{"id": i, "name": f"{s} {p}", "supercategory": s} for i, (s, p) in enumerate(cats)]


def synthesize(dataset: str, base: Path, num_images: int, seed: int) -> None:
    """A tiny PartImageNet: JPEGs in <split>/<wnid>/, COCO polygons; val and test ids overlap on purpose."""
    supers = list(TAXONOMY)
    first_part = np.cumsum([0] + [len(TAXONOMY[s]) for s in supers])
    for split_index, (split, synsets) in enumerate(SYNTH_SYNSETS.items()):
        rng = np.random.default_rng([seed, split_index])
        images, annotations = [], []
        for n in range(num_images):
            wnid = list(synsets)[n % len(synsets)]
            super_index = supers.index(synsets[wnid])
            scene = planted.draw_scene(rng, 96, 128, [len(TAXONOMY[s]) for s in supers], [super_index])
            file_name = f"{wnid}_{1000 + n}.JPEG"
            (base / split / wnid).mkdir(parents=True, exist_ok=True)
            Image.fromarray(scene.image).save(base / split / wnid / file_name, quality=90)
            image_id = n + 1
            images.append({"id": image_id, "file_name": file_name, "height": 96, "width": 128})
            _, part_polygons = planted.polygons(scene.objects[0])
            for j, polygon in enumerate(part_polygons):
                cat = int(first_part[super_index] + j)
                annotations.append(coco.polygon_annotation(len(annotations) + 1, image_id, cat, polygon, 96, 128))
        if split == "train":  # a degenerate polygon, as the release has a few: skipped and counted
            annotations.append({"id": len(annotations) + 1, "image_id": 2, "category_id": 0,
                                "segmentation": [[10.0, 10.0, 20.0, 20.0]], "bbox": [10, 10, 10, 10], "area": 0, "iscrowd": 0})
        base.mkdir(parents=True, exist_ok=True)
        write_json_atomic(base / f"{split}.json", {"images": images, "annotations": annotations,
                                                        "categories": categories()})


def prepare_valtest(base: Path) -> str:
    """Creates valtest.json (val + test, ids unique and stable) and valtest/ (symlinks); returns a summary.

    Test ids that collide with val ids are offset by the smallest power of ten above the largest val
    id, so the same inputs always give the same ids. Idempotent: a rerun rebuilds the same result.
    """
    splits = {}
    for split in ("val", "test"):
        if not (base / f"{split}.json").is_file() or not (base / split).is_dir():
            raise PrepareError(
                f"{base / split}.json and {base / split}/ are needed to make valtest; place PartImageNet's "
                "val and test splits first (datasets/README.md, section PartImageNet)"
            )
        splits[split] = read_split(base / f"{split}.json")
    val, test = splits["val"], splits["test"]
    if sorted(map(str, val["categories"])) != sorted(map(str, test["categories"])):
        raise PrepareError(f"{base}/val.json and test.json have different categories: not the same release?")
    for name, data in splits.items():
        for key, fields in (("images", ("id",)), ("annotations", ("id", "image_id"))):
            # a malformed entry is skipped by the loader, but merging needs the ids of every entry
            if not all(isinstance(x, dict) and all(_is_int(x.get(f)) for f in fields) for x in data[key]):
                raise PrepareError(f"{base}/{name}.json has {key} without an integer {' or '.join(fields)}: "
                                   "cannot merge it unambiguously")
            ids = [x["id"] for x in data[key]]
            if len(ids) != len(set(ids)):
                raise PrepareError(f"{base}/{name}.json has duplicate {key} ids: cannot merge it unambiguously")
    shared = {i.get("file_name") for i in val["images"]} & {i.get("file_name") for i in test["images"]} - {None}
    if shared:
        raise PrepareError(f"{len(shared)} images are in both val and test (e.g. {sorted(shared)[0]}): cannot merge")
    image_offset = _offset([i["id"] for i in val["images"]], [i["id"] for i in test["images"]])
    ann_offset = _offset([a["id"] for a in val["annotations"]], [a["id"] for a in test["annotations"]])
    merged = {
        "images": val["images"] + [{**i, "id": i["id"] + image_offset} for i in test["images"]],
        "annotations": val["annotations"] + [
            {**a, "id": a["id"] + ann_offset, "image_id": a["image_id"] + image_offset} for a in test["annotations"]
        ],
        "categories": val["categories"],
    }
    _link_folders(base, ("val", "test"), base / "valtest")
    write_json_atomic(base / "valtest.json", merged)  # last: its presence means valtest is complete
    return (
        f"valtest: {len(merged['images'])} images (val {len(val['images'])} + test {len(test['images'])}), "
        f"{len(merged['annotations'])} annotations; test image ids offset by {image_offset}, "
        f"annotation ids by {ann_offset}"
    )


def _offset(first: list[int], second: list[int]) -> int:
    """0 when the id sets are disjoint, else the smallest power of ten above max(first)."""
    if not set(first) & set(second):
        return 0
    return 10 ** math.ceil(math.log10(max(first) + 1))


def _link_folders(base: Path, splits: tuple[str, ...], target: Path) -> None:
    """target/<wnid> -> ../<split>/<wnid> for every class folder, built aside and swapped in."""
    tmp, old = base / f".{target.name}.tmp", base / f".{target.name}.old"
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir()
    for split in splits:
        for folder in sorted(p for p in (base / split).iterdir() if p.is_dir()):
            link = tmp / folder.name
            if link.is_symlink():
                shutil.rmtree(tmp)
                raise PrepareError(
                    f"synset {folder.name} has a folder in more than one of {splits}; the OOD release's splits "
                    "have disjoint classes: is this the right release?"
                )
            link.symlink_to(os.path.join("..", split, folder.name))
    if target.exists() or target.is_symlink():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)
