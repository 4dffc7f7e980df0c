"""The built-in synthetic data set: PartImageNet's COCO format with object annotations too.

`<split>.json` holds `categories` (the part classes, each naming its object class in
`supercategory` and `object_category_id`), `object_categories` (the object classes) and
`annotations` of two types: `"type": "object"` (one per object, its outline) and `"type": "part"`
(with `object_id`, the id of its object's annotation). Images are PNGs in `<split>/`. Every stage
can run on it, `object_masks.source=gt` included, since its training split is annotated as well.

Like ImageNet, a training image shows one object, of the image's class (the method keeps one instance
per image and gives it the image's class); a val image shows one or two. Sizes, positions and each
image's colours vary (`VARIATION`), so recovering the parts takes more than a colour lookup.
`generation.json` records what made the folder (generator version, seed, images per split).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from partdistill.data import coco, planted
from partdistill.data.catalog import Metadata
from partdistill.data.layout import GENERATION_FILE, KEYED_SYNTHETIC, generation
from partdistill.data.records import SkipLog, object_record, part_record
from partdistill.io import write_json_atomic

OBJECT_CLASSES = ("disc", "tower", "kite", "shield")
PARTS_PER_CLASS = (3, 3, 3, 3)
PART_NAMES = ("top", "middle", "bottom")
HEIGHT, WIDTH = 96, 128
VARIATION = planted.Variation(size_x=(0.22, 0.46), size_y=(0.24, 0.46), shift=0.3, inside=True, colour_jitter=0.15)


def load(dataset: str, base: Path, split: str, root: Path) -> list[dict]:
    json_path = base / f"{split}.json"
    data = coco.read_json(json_path)
    part_ids = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    object_ids = {c["id"]: i for i, c in enumerate(sorted(data["object_categories"], key=lambda c: c["id"]))}
    annotations = coco.annotations_by_image(data)
    skipped = SkipLog(f"{dataset}_{split}")
    records = []
    for image in sorted(data["images"], key=lambda img: img["id"]):
        path, height, width = base / split / image["file_name"], image["height"], image["width"]
        if not path.is_file():
            skipped.add(path, f"image missing (listed in {json_path.name}, image id {image['id']})")
            continue
        masks, objects = {}, []
        for ann in annotations.get(image["id"], []):
            try:
                masks[ann["id"]] = coco.segmentation_mask(ann["segmentation"], height, width)
            except ValueError as exc:
                skipped.add(f"{json_path}#annotation-{ann['id']}", f"empty or degenerate segmentation ({exc})")
        for ann in annotations.get(image["id"], []):
            if ann.get("type") != "object" or ann["id"] not in masks:
                continue
            parts = [
                part_record(part_ids[p["category_id"]], masks[p["id"]])
                for p in annotations[image["id"]]
                if p.get("type") == "part" and p.get("object_id") == ann["id"] and p["id"] in masks
            ]
            objects.append(object_record(object_ids[ann["category_id"]], masks[ann["id"]], parts))
        records.append({"file_name": str(path), "height": height, "width": width, "image_id": image["id"],
                        "annotations": objects})
    skipped.report()
    return records


def metadata(dataset: str, base: Path, split: str, root: Path) -> Metadata:
    data = coco.read_json(base / f"{split}.json")
    objects = sorted(data["object_categories"], key=lambda c: c["id"])
    parts = sorted(data["categories"], key=lambda c: c["id"])
    object_index = {c["id"]: i for i, c in enumerate(objects)}
    parts_of: dict[int, list[int]] = {i: [] for i in range(len(objects))}
    for i, part in enumerate(parts):
        parts_of[object_index[part["object_category_id"]]].append(i)
    return Metadata([c["name"] for c in objects], [c["name"] for c in parts], parts_of)


def categories() -> tuple[list[dict], list[dict]]:
    """(part categories, object categories) of the synthetic data set."""
    objects = [{"id": i, "name": name} for i, name in enumerate(OBJECT_CLASSES)]
    parts = [
        {"id": len(PART_NAMES) * c + j, "name": f"{name} {PART_NAMES[j]}", "supercategory": name, "object_category_id": c}
        for c, name in enumerate(OBJECT_CLASSES)
        for j in range(PARTS_PER_CLASS[c])
    ]
    return parts, objects


def synthesize(dataset: str, base: Path, num_images: int, seed: int) -> None:
    """train (one object per image, the classes in turn) and val (one or two objects per image),
    `num_images` each; generation.json last, so a folder that has it is complete."""
    part_categories, object_categories = categories()
    for split_index, split in enumerate(("train", "val")):
        rng = np.random.default_rng([seed, 100 + split_index])
        (base / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for n in range(num_images):
            if split == "train":
                classes = [n % len(OBJECT_CLASSES)]
            else:
                classes = rng.choice(len(OBJECT_CLASSES), size=1 + n % 2, replace=False).tolist()
            scene = planted.draw_scene(rng, HEIGHT, WIDTH, PARTS_PER_CLASS, classes, VARIATION)
            file_name = f"{n:06d}.png"
            Image.fromarray(scene.image).save(base / split / file_name)
            images.append({"id": n + 1, "file_name": file_name, "height": HEIGHT, "width": WIDTH})
            for obj in scene.objects:
                outline, part_polygons = planted.polygons(obj)
                object_id = len(annotations) + 1
                annotations.append(coco.polygon_annotation(object_id, n + 1, obj.object_class, outline, HEIGHT, WIDTH, type="object"))
                for j, polygon in enumerate(part_polygons):
                    cat = len(PART_NAMES) * obj.object_class + j
                    annotations.append(coco.polygon_annotation(
                        len(annotations) + 1, n + 1, cat, polygon, HEIGHT, WIDTH, type="part", object_id=object_id))
        write_json_atomic(base / f"{split}.json", {
            "images": images, "annotations": annotations, "categories": part_categories,
            "object_categories": object_categories,
        })
    write_json_atomic(base / GENERATION_FILE, generation(num_images, seed))


def ensure(dataset: str, datasets_root: Path) -> bool:
    """Writes the keyed synthetic set `dataset` (synthetic-s<seed>-n<images>) under `datasets_root` if its
    folder does not exist yet; True if it wrote it. It is written to a temporary folder and renamed, so
    a killed run leaves no half-made set under the real name."""
    import shutil

    key = KEYED_SYNTHETIC.match(dataset)
    folder = Path(datasets_root) / dataset
    if key is None or folder.exists():
        return False
    seed, num_images = int(key.group(1)), int(key.group(2))
    print(f"writing the synthetic data set {dataset} (seed {seed}, {num_images} images per split) to {folder}",
          flush=True)
    staging = folder.with_name(f".{dataset}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    synthesize(dataset, staging, num_images, seed)
    os.replace(staging, folder)
    return True
