"""ImageNet-1K (`imagenet_1k/{train,val}/<wnid>/*.JPEG`) and ImageNet-22K (`imagenet_22k/<wnid>/*.JPEG`).

Records carry no annotations: the pipeline makes its own pseudo-labels. Loading reads the
cached file index (`partdistill.data.index`) and never opens an image, so `height` and `width`
are None until a stage that opens the image fills them; a corrupt image is found (and skipped)
by that stage. `class_id` is the position of the wnid among the sorted class folders of the
split, the same ids `metadata(...).extra["wnids"]` lists.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from partdistill.data import planted
from partdistill.data.catalog import Metadata
from partdistill.data.index import cached_index, class_folders

log = logging.getLogger(__name__)

# files of "wnid<TAB or space>name, synonym, ..." lines, looked for beside the class folders
NAME_FILES = ("words.txt", "synsets.dat", "LOC_synset_mapping.txt")

# the synthetic copy: real wnids (the first five of ImageNet-1K) and a part count per class
SYNTHETIC_CLASSES = (
    ("n01440764", "tench, Tinca tinca"),
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01484850", "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"),
    ("n01491361", "tiger shark, Galeocerdo cuvieri"),
    ("n01494475", "hammerhead, hammerhead shark"),
)
SYNTHETIC_PARTS = (3, 3, 4, 2, 3)


def split_folder(dataset: str, base: Path, split: str) -> Path:
    """The folder of class folders: `base/<split>` for ImageNet-1K, `base` itself for ImageNet-22K."""
    return Path(base) if dataset == "imagenet_22k" else Path(base) / split


def load(dataset: str, base: Path, split: str, root: Path) -> list[dict]:
    """One record per image file: file_name, image_id (the file stem), wnid, class_id; height/width None."""
    folder = split_folder(dataset, base, split).absolute()
    log.info("%s_%s: images from %s", dataset, split, folder)
    table = cached_index(folder, Path(root) / "cache")
    class_id = {wnid: i for i, wnid in enumerate(class_folders(folder))}
    prefix = f"{folder}/"
    return [
        {
            "file_name": prefix + path,
            "image_id": path[path.rindex("/") + 1 : path.rindex(".")],
            "wnid": wnid,
            "class_id": class_id[wnid],
            "height": None,
            "width": None,
        }
        for path, wnid in zip(table.column("path").to_pylist(), table.column("wnid").to_pylist())
    ]


def read_names(path: Path) -> dict[str, str]:
    """{wnid: first name} from a words.txt-style file; lines without a name are left out."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:  # names are only labels: a bad byte must not stop a run
        log.warning("%s: not UTF-8 (%s); undecodable bytes in class names are shown as U+FFFD", path, error)
        text = raw.decode("utf-8", "replace")
    names = {}
    for line in text.splitlines():
        fields = line.strip().split(maxsplit=1)
        if len(fields) == 2:
            names[fields[0]] = fields[1].split(",")[0].strip()
    return names


def metadata(dataset: str, base: Path, split: str, root: Path) -> Metadata:
    """thing_classes: each wnid's first name from words.txt/synsets.dat in `base` (else the wnid)."""
    wnids = class_folders(split_folder(dataset, base, split))
    found = [Path(base) / name for name in NAME_FILES if (Path(base) / name).is_file()]
    names = read_names(found[0]) if found else {}
    if not found:
        log.info("%s: no %s; class names are the wnids", base, " or ".join(NAME_FILES))
    return Metadata(thing_classes=[names.get(w, w) for w in wnids], extra={"wnids": wnids})


def _write_split(folder: Path, stems: list[list[str]], rng: np.random.Generator) -> None:
    """Writes `stems[c]` as JPEGs of class c into `folder/<wnid of c>/`."""
    for class_index, class_stems in enumerate(stems):
        wnid = SYNTHETIC_CLASSES[class_index][0]
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        for stem in class_stems:
            height, width = (int(v) for v in rng.integers(48, 81, size=2))
            scene = planted.draw_scene(rng, height, width, SYNTHETIC_PARTS, [class_index])
            Image.fromarray(scene.image).save(folder / wnid / f"{stem}.JPEG", quality=90)


def synthesize(dataset: str, base: Path, num_images: int, seed: int) -> None:
    """A tiny copy in the real layout: five real wnids, one planted object per JPEG.

    Args:
        dataset (str): imagenet_1k (train/ and val/ split folders) or imagenet_22k (class folders
            in `base`, plus words.txt).
        base (Path): the dataset folder to write into.
        num_images (int): images per split, spread over the classes (at least one per class).
        seed (int): the same seed writes the same files.
    """
    base = Path(base)
    k = len(SYNTHETIC_CLASSES)
    counts = [max(1, num_images // k + (i < num_images % k)) for i in range(k)]
    # file names as in the real datasets: <wnid>_<n> for train, ILSVRC2012_val_<8 digits> for val
    train = [[f"{wnid}_{n + 1}" for n in range(c)] for (wnid, _), c in zip(SYNTHETIC_CLASSES, counts)]
    if dataset == "imagenet_22k":
        _write_split(base, train, np.random.default_rng([seed, 0]))
        (base / "words.txt").write_text("".join(f"{wnid}\t{name}\n" for wnid, name in SYNTHETIC_CLASSES))
        return
    numbers = iter(range(1, sum(counts) + 1))
    val = [[f"ILSVRC2012_val_{next(numbers):08d}" for _ in range(c)] for c in counts]
    _write_split(base / "train", train, np.random.default_rng([seed, 0]))
    _write_split(base / "val", val, np.random.default_rng([seed, 1]))
