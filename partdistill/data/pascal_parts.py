"""Pascal-Part (`pascal_parts_{train,val}`): VOC images with the part masks of Chen et al. (.mat files).

Layout under the dataset folder (datasets/README.md, section "Pascal-Part"):

    images/JPEGImages/<id>.jpg
    images/ImageSets/Main/{train,val}.txt     VOC split lists, one image id per line
    annotations/<id>.mat                      only for images that have part annotations

The .mat files are read and written by `pascal_mat`. Raw part names ('lfleg', 'engine_3') are cut
at the first '_' and merged through `datasets/metadata/pascal_part_taxonomy.yaml` into the 50
evaluated part classes; the masks of one object that merge to the same part are joined into one
part annotation.
"""
from __future__ import annotations

import functools
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from partdistill.data.catalog import Metadata
from partdistill.data.folders import image_mismatch
from partdistill.data.pascal_mat import MatLayoutError, MatObject, read_mat, write_mat
from partdistill.data.planted import Scene, draw_scene
from partdistill.data.records import SkipLog, object_record, part_record
from partdistill.paths import CHECKOUT

log = logging.getLogger(__name__)

TAXONOMY_PATH = CHECKOUT / "datasets" / "metadata" / "pascal_part_taxonomy.yaml"
SPLITS = ("train", "val")
THING_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
# the paper code's merged part ids (pascal_info.py; method_reference.md 3.3)
PART_CLASSES = (
    "body", "stern", "wing", "tail", "engine", "wheel", "seat", "handlebar", "chainwheel",
    "headlight", "head", "eye", "beak", "torso", "neck", "leg", "foot", "cap", "front", "side",
    "back", "roof", "mirror", "license plate", "door", "window", "ear", "nose", "paw", "muzzle",
    "horn", "hoof", "eyebrow", "mouth", "hair", "arm", "hand", "pot", "plant", "locomotive",
    "locomotive_front", "locomotive_side", "locomotive_backside", "locomotive_roof", "coach_car",
    "coach_front", "coach_side", "coach_backside", "coach_roof", "screen",
)  # fmt: skip
CLASS_ID = {name: i for i, name in enumerate(THING_CLASSES)}
PART_ID = {name: i for i, name in enumerate(PART_CLASSES)}
MAT_CLASS_NAMES = {"table": "diningtable"}  # the .mat files' spelling -> ours
MAT_SPELLING = {ours: theirs for theirs, ours in MAT_CLASS_NAMES.items()}
SYNTHETIC_PARTS = 4  # raw parts planted per object class in synthetic copies (at most)


@functools.lru_cache(maxsize=None)
def taxonomy(path: Path = TAXONOMY_PATH) -> dict[str, dict[str, str]]:
    """Object class -> {raw part name: merged part name} (cached; do not modify the result).

    Raises:
        ValueError: naming `path`, if its classes are not THING_CLASSES in order, a raw name holds
            '_' (names are cut there), or its merged names are not exactly PART_CLASSES.
    """
    with open(path) as f:
        data = yaml.safe_load(f)
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, dict) or tuple(classes) != THING_CLASSES:
        raise ValueError(f"{path}: 'classes' must map the 20 VOC classes, in VOC order, to their parts")
    table = {name: dict(parts or {}) for name, parts in classes.items()}
    bad_raw = sorted(raw for parts in table.values() for raw in parts if "_" in raw)
    if bad_raw:
        raise ValueError(f"{path}: raw part names must not contain '_' (names are cut there): {bad_raw}")
    merged = {m for parts in table.values() for m in parts.values()}
    if merged != set(PART_CLASSES):
        raise ValueError(
            f"{path}: merged part names differ from the 50 part classes: "
            f"not in PART_CLASSES {sorted(merged - set(PART_CLASSES))}, "
            f"never used {sorted(set(PART_CLASSES) - merged)}"
        )
    return table


def metadata(dataset: str, base: Path, split: str, root: Path) -> Metadata:
    """The 20 VOC classes, the 50 merged part classes, and each class's sorted part ids."""
    table = taxonomy()
    parts_of = {CLASS_ID[name]: sorted({PART_ID[m] for m in parts.values()}) for name, parts in table.items()}
    return Metadata(list(THING_CLASSES), list(PART_CLASSES), parts_of)


def _annotations(path: Path, objects: list[MatObject], skips: SkipLog) -> list[dict]:
    """object_records of one file; unknown classes, empty objects and unknown part names go to `skips`."""
    table = taxonomy()
    annotations = []
    for i, (mat_class, mask, parts) in enumerate(objects):
        name = MAT_CLASS_NAMES.get(mat_class, mat_class)
        if name not in CLASS_ID:
            skips.add(path, f"object {i}: unknown class {mat_class!r}")
            continue
        if not mask.any():
            skips.add(path, f"object {i} ({name}): empty mask")
            continue
        merged: dict[int, np.ndarray] = {}
        for raw, part_mask in parts:
            merged_name = table[name].get(raw.split("_", 1)[0])
            if merged_name is None:
                skips.add(path, f"object {i} ({name}): unknown part name {raw!r}")
                continue
            pid = PART_ID[merged_name]
            merged[pid] = merged[pid] | part_mask if pid in merged else part_mask
        # an empty part would count as an unmatched ground-truth part in proposal recall
        part_records = [part_record(pid, m) for pid, m in sorted(merged.items()) if m.any()]
        annotations.append(object_record(CLASS_ID[name], mask, part_records))
    return annotations


def split_ids(base: Path, split: str) -> list[str]:
    """Image ids of a VOC split list (first token of each non-empty line)."""
    lines = (base / "images" / "ImageSets" / "Main" / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def load(dataset: str, base: Path, split: str, root: Path) -> list[dict]:
    """One record per part-annotated image of the split (DESIGN.md "Contracts").

    Objects of part-less classes (boat, chair, diningtable, sofa) are kept with `parts=[]`.
    Split images without a .mat are counted in one log line; unreadable .mat files, images that are
    missing or of another size than their masks, unknown classes and unknown part names are skipped
    and named in one warning at the end.
    """
    name = f"{dataset}_{split}"
    skips = SkipLog(name)
    ids = split_ids(base, split)
    records, unannotated = [], 0
    for image_id in ids:
        path = base / "annotations" / f"{image_id}.mat"
        if not path.is_file():
            unannotated += 1
            continue
        try:
            objects = read_mat(path)
        except MatLayoutError as e:
            skips.add(path, str(e))
            continue
        height, width = objects[0][1].shape
        image = (base / "images" / "JPEGImages" / f"{image_id}.jpg").absolute()
        mismatch = image_mismatch(image, height, width)
        if mismatch is not None:
            skips.add(path, f"its image {image} is {mismatch}")
            continue
        records.append({
            "file_name": str(image),
            "height": int(height),
            "width": int(width),
            "image_id": image_id,
            "annotations": _annotations(path, objects, skips),
        })  # fmt: skip
    if unannotated:
        log.info(
            "%s: %d of %d listed image(s) have no part annotation (.mat) and are not loaded",
            name, unannotated, len(ids),
        )  # fmt: skip
    skips.report()
    return records


# --- synthetic copies -------------------------------------------------------------------------


def synthetic_part_names(name: str) -> list[str]:
    """Raw part names (as written to .mat files) planted for an object class, fixed per class.

    Two raw names that merge to one part come first (where the class has such a pair, e.g.
    lwing/rwing) so merging is exercised, then others in taxonomy order, up to SYNTHETIC_PARTS;
    the last of 3 or more carries a '_1' suffix, as repeated parts do in the real files.
    """
    by_merged = defaultdict(list)
    for raw, merged in taxonomy()[name].items():
        by_merged[merged].append(raw)
    pair = next((raws[:2] for raws in by_merged.values() if len(raws) > 1), [])
    names = (pair + [raw for raw in taxonomy()[name] if raw not in pair])[:SYNTHETIC_PARTS]
    if len(names) >= 3:
        names[-1] += "_1"
    return names


@dataclass
class SyntheticImage:
    """One planted image: `scene.objects[k].part_masks[j]` is written as `part_names[k][j]`."""

    image_id: str
    split: str
    scene: Scene
    class_names: list[str]
    part_names: list[list[str]]


def synthetic_images(num_images: int, seed: int) -> list[SyntheticImage]:
    """The annotated images `synthesize` writes, `num_images` per split (train first).

    Objects (1 to 3 per image) take classes from a shuffled cycle of the 20 classes, so with
    num_images >= 10 the copy holds every class, part-less ones included.
    """
    rng = np.random.default_rng(seed)
    planted = [synthetic_part_names(name) for name in THING_CLASSES]
    cycle: list[int] = []
    images = []
    for n in range(len(SPLITS) * num_images):
        count = int(rng.integers(1, 4))
        while len(cycle) < count:
            cycle += rng.permutation(len(THING_CLASSES)).tolist()
        classes, cycle = cycle[:count], cycle[count:]
        # columns of 40+ px keep every planted band non-empty
        height, width = int(rng.integers(40, 64)), int(rng.integers(40, 56)) * count
        scene = draw_scene(rng, height, width, [len(p) for p in planted], classes)
        images.append(SyntheticImage(
            f"2008_{n + 1:06d}", SPLITS[n // num_images], scene,
            [THING_CLASSES[c] for c in classes], [planted[c] for c in classes],
        ))  # fmt: skip
    return images


def synthesize(dataset: str, base: Path, num_images: int, seed: int) -> None:
    """A tiny Pascal-Part copy under `base` in the real format, `num_images` annotated images per split.

    val.txt also lists one image without a .mat, as the real split lists do.
    """
    (base / "images" / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (base / "images" / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    images = synthetic_images(num_images, seed)
    for image in images:
        jpeg = base / "images" / "JPEGImages" / f"{image.image_id}.jpg"
        Image.fromarray(image.scene.image).save(jpeg, quality=90)
        objects = [
            (MAT_SPELLING.get(name, name), CLASS_ID[name] + 1, obj.mask, list(zip(part_names, obj.part_masks)))
            for name, obj, part_names in zip(image.class_names, image.scene.objects, image.part_names)
        ]
        write_mat(base / "annotations" / f"{image.image_id}.mat", image.image_id, objects)
    unannotated = f"2008_{len(images) + 1:06d}"
    Image.new("RGB", (64, 48), (120, 120, 120)).save(base / "images" / "JPEGImages" / f"{unannotated}.jpg")
    for split in SPLITS:
        ids = [image.image_id for image in images if image.split == split]
        ids += [unannotated] if split == "val" else []
        (base / "images" / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
