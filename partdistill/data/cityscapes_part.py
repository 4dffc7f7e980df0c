"""Cityscapes-Panoptic-Parts: instance parts of person, rider, car, truck and bus.

Each `gtFinePanopticParts/<split>/<city>/<city>_<seq>_<frame>_gtFinePanopticParts.tif` holds one
32-bit uid per pixel that encodes semantic id, instance id and part id (`decode_uids`), so objects
and their parts come from this one file and `gtFine` is not needed. The images are
`leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` (`leftImage8bit` is accepted).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from partdistill.data.catalog import Metadata
from partdistill.data.folders import image_mismatch
from partdistill.data.planted import Scene, draw_scene
from partdistill.data.records import SkipLog, object_record, part_record

log = logging.getLogger(__name__)

LABEL_DIR = "gtFinePanopticParts"
LABEL_SUFFIX = "_gtFinePanopticParts.tif"
IMAGE_SUFFIX = "_leftImg8bit.png"
IMAGE_DIRS = ("leftImg8bit", "leftImage8bit")  # the official name first; the other appears in some instructions

THING_CLASSES = ["person", "rider", "car", "truck", "bus"]
FIRST_SID = 24  # Cityscapes label id of person; the five classes are ids 24..28 in THING_CLASSES order
PARTS = {
    "person": ["torso", "head", "arm", "leg"],
    "rider": ["torso", "head", "arm", "leg"],
    "car": ["window", "wheel", "light", "license plate", "chassis"],
    "truck": ["window", "wheel", "light", "license plate", "chassis"],
    "bus": ["window", "wheel", "light", "license plate", "chassis"],
}
PART_BASE_ID = {0: 0, 1: 4, 2: 8, 3: 13, 4: 18}  # object id -> global id of its part pid 1
NUM_PARTS = [len(PARTS[name]) for name in THING_CLASSES]
LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.uint32))

# synthetic copy: cities per split, image size, semantic ids of the background and of a part-less thing
SYNTH_CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau")}
SYNTH_SIZE = (64, 128)
SKY, ROAD, BICYCLE = 23, 7, 33


def metadata(dataset: str, base: Path, split: str, root: Path) -> Metadata:
    """The 5 object classes, the 23 part classes ('person-torso' ... 'bus-chassis'), and their sids."""
    part_classes = [f"{name}-{part}" for name in THING_CLASSES for part in PARTS[name]]
    parts_of = {c: list(range(PART_BASE_ID[c], PART_BASE_ID[c] + NUM_PARTS[c])) for c in range(len(THING_CLASSES))}
    sids = list(range(FIRST_SID, FIRST_SID + len(THING_CLASSES)))
    return Metadata(list(THING_CLASSES), part_classes, parts_of, {"sids": sids})


def decode_uids(uids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits uids into (sid, iid, pid) int64 arrays of the same shape; -1 where a field is absent.

    uid <= 99: sid only; 1_000..99_999: sid * 1000 + iid; 100_000..9_999_999: sid * 100_000 +
    iid * 100 + pid. Values outside these ranges (100..999, negative, >= 10^7) get sid -1.
    """
    uids = np.asarray(uids, dtype=np.int64)
    semantic = (uids >= 0) & (uids <= 99)
    instance = (uids >= 1_000) & (uids <= 99_999)
    part = (uids >= 100_000) & (uids <= 9_999_999)
    sid = np.select([semantic, instance, part], [uids, uids // 1000, uids // 100_000], -1)
    iid = np.select([instance, part], [uids % 1000, (uids // 100) % 1000], -1)
    pid = np.where(part, uids % 100, -1)
    return sid, iid, pid


def read_label(path: Path) -> np.ndarray:
    """The uid array of a label TIFF (tifffile; PIL where tifffile cannot decode it, e.g. LZW
    without imagecodecs). Raises ValueError naming the file when neither can read it."""
    try:
        return tifffile.imread(path)
    except (ValueError, OSError) as tiff_error:  # not a TIFF, a missing codec (LZW), a truncated file
        try:
            with Image.open(path) as image:
                return np.asarray(image)
        except OSError as pil_error:
            raise ValueError(f"{path}: unreadable label TIFF (tifffile: {tiff_error}; PIL: {pil_error})") from None


def image_dir(base: Path) -> Path:
    """`<base>/leftImg8bit`, or the alias `<base>/leftImage8bit` where only that exists."""
    for name in IMAGE_DIRS:
        if (base / name).is_dir():
            if name != IMAGE_DIRS[0]:
                log.warning("using %s for the images (the official folder name is %s)", base / name, IMAGE_DIRS[0])
            return base / name
    return base / IMAGE_DIRS[0]


def objects_from_uids(uids: np.ndarray) -> list[dict]:
    """Object annotations (with `sid` and `iid`) of a uid array, sorted by (sid, iid).

    An object is every pixel of one (sid, iid) with sid in 24..28, with or without a part label;
    its parts are the pids 1..K of its class (pid 0, unlabeled, and other pids are not parts).
    """
    sid, iid, pid = decode_uids(uids)
    valid = (sid >= FIRST_SID) & (sid < FIRST_SID + len(THING_CLASSES)) & (iid >= 0)
    keys, inverse = np.unique(sid[valid] * 1000 + iid[valid], return_inverse=True)
    index = np.zeros(uids.shape, np.int32)
    index[valid] = inverse.ravel() + 1
    annotations = []
    # work inside each object's box: a full-image pass per part would cost O(objects x parts x H x W)
    for number, (key, box) in enumerate(zip(keys, ndimage.find_objects(index, len(keys))), start=1):
        object_sid, object_iid = divmod(int(key), 1000)
        category = object_sid - FIRST_SID
        crop = index[box] == number
        parts = []
        for p in np.unique(pid[box][crop]):
            if 1 <= p <= NUM_PARTS[category]:
                part = crop & (pid[box] == p)
                parts.append(part_record(PART_BASE_ID[category] + int(p) - 1, _paste(part, box, uids.shape)))
        annotations.append(
            object_record(category, _paste(crop, box, uids.shape), parts, sid=object_sid, iid=object_iid)
        )
    return annotations


def _paste(crop: np.ndarray, box: tuple[slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    # column-major, as COCO RLE runs: spares masks.encode a full-image transposing copy (3x faster load)
    full = np.zeros(shape, bool, order="F")
    full[box] = crop
    return full


def load(dataset: str, base: Path, split: str, root: Path) -> list[dict]:
    """Records of a split, one per label file with an image, sorted by image_id.

    Label files whose image is missing or unreadable, that cannot be read, that are not 2-D
    int32/uint32, or whose size differs from their image's are skipped, counted, and named in one
    warning at the end.
    """
    skips = SkipLog(f"{dataset}_{split}")
    images = image_dir(base) / split
    records = []
    labels = sorted((base / LABEL_DIR / split).glob(f"*/*{LABEL_SUFFIX}"))
    for path in tqdm(labels, desc=f"{dataset}_{split}", disable=None):
        image_id = path.name[: -len(LABEL_SUFFIX)]
        image = images / path.parent.name / f"{image_id}{IMAGE_SUFFIX}"
        if not image.is_file():
            skips.add(path, f"its image {image} is missing")
            continue
        try:
            uids = read_label(path)
        except ValueError as error:
            skips.add(path, str(error))
            continue
        if uids.dtype not in LABEL_DTYPES or uids.ndim != 2:
            skips.add(path, f"label array of dtype {uids.dtype} and shape {uids.shape} (expected 2-D int32 or uint32)")
            continue
        mismatch = image_mismatch(image, *uids.shape)
        if mismatch is not None:
            skips.add(path, f"its image {image} is {mismatch}")
            continue
        records.append(
            {
                "file_name": str(image.absolute()),
                "height": int(uids.shape[0]),
                "width": int(uids.shape[1]),
                "image_id": image_id,
                "annotations": objects_from_uids(uids),
            }
        )
    skips.report()
    return sorted(records, key=lambda r: r["image_id"])


def planted(split: str, num_images: int, seed: int) -> list[tuple[str, str, Scene]]:
    """(city, image_id, scene) of each image `synthesize` writes for a split: 1-3 objects each."""
    rng = np.random.default_rng([seed, list(SYNTH_CITIES).index(split)])
    cities = SYNTH_CITIES[split][: max(1, min(len(SYNTH_CITIES[split]), num_images))]  # no empty city folder
    out = []
    for i in range(num_images):
        classes = rng.integers(0, len(THING_CLASSES), size=rng.integers(1, 4))
        city = cities[i % len(cities)]
        out.append((city, f"{city}_000000_{i:06d}", draw_scene(rng, *SYNTH_SIZE, NUM_PARTS, classes)))
    return out


def encode_scene(scene: Scene) -> np.ndarray:
    """The uint32 uid array of a planted scene.

    Background is sky above road with a part-less bicycle instance in a corner (none of them an
    object). Each object's pixels carry sid * 100_000 + iid * 100 + pid, except its topmost row,
    written in the 5-digit form without part (sid * 1000 + iid), and its bottommost row, pid 0,
    so that every form of the format occurs; iids count from 0 per class, as in Cityscapes.
    """
    height, width = scene.image.shape[:2]
    uids = np.full((height, width), ROAD, np.uint32)
    uids[: height // 3] = SKY
    uids[-4:, :6] = BICYCLE * 1000
    counts = [0] * len(THING_CLASSES)
    for obj in scene.objects:
        sid, iid = FIRST_SID + obj.object_class, counts[obj.object_class]
        counts[obj.object_class] += 1
        for p, part in enumerate(obj.part_masks, start=1):
            uids[part] = sid * 100_000 + iid * 100 + p
        rows = np.nonzero(obj.mask.any(axis=1))[0]
        top, bottom = np.zeros_like(obj.mask), np.zeros_like(obj.mask)
        top[rows[0]], bottom[rows[-1]] = obj.mask[rows[0]], obj.mask[rows[-1]]
        uids[top] = sid * 1000 + iid
        uids[bottom] = sid * 100_000 + iid * 100
    return uids


def synthesize(dataset: str, base: Path, num_images: int, seed: int) -> None:
    """Writes `num_images` images per split (train, val) with uint32 label TIFFs under `base`;
    the first train label is written as int32, so that both accepted dtypes occur."""
    base = Path(base)
    for split in SYNTH_CITIES:
        for i, (city, image_id, scene) in enumerate(planted(split, num_images, seed)):
            uids = encode_scene(scene)
            if split == "train" and i == 0:
                uids = uids.astype(np.int32)
            label = base / LABEL_DIR / split / city / f"{image_id}{LABEL_SUFFIX}"
            image = base / IMAGE_DIRS[0] / split / city / f"{image_id}{IMAGE_SUFFIX}"
            label.parent.mkdir(parents=True, exist_ok=True)
            image.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(label, uids)
            Image.fromarray(scene.image).save(image)
