"""Saved predictions: the file format any method can write to be scored by partdistill.

A file is a JSON list, or JSON Lines, of segment records:

    {"image_id": <the dataset record's image_id, same value and type>,
     "segmentation": <COCO RLE at the image's original size: {"size": [height, width], "counts": str}>,
     "label": <int, 0..65535>, "score": <finite number>}

Where segments overlap, a pixel takes the label of the highest-scoring segment covering it. Labels are
cluster ids (mapped to parts per object class) or, with the identity mapping, the dataset's part ids.
They are bounded because the mIoU evaluator keeps one count table row per label value, up to the largest
label in the file: 65535 is what a 16-bit label map holds, and at that bound the table takes 8 bytes x
object classes x 65537 x (most parts + 1), 0.5 GB for PartImageNet's 158 synsets.

Every record is checked when the file is read, before anything is scored or sized by its values; each
error names the file, the record index and the field. The checks run on whole columns (numpy), not
record by record, and the RLE counts are checked by parsing their run lengths, without decoding masks.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from partdistill.data import masks
from partdistill.errors import PredictionError
from partdistill.evaluation.samples import Prediction

FIX = "see the prediction format in partdistill/evaluation/predictions.py"
KEYS = ("image_id", "segmentation", "label", "score")
MAX_LABEL = 2**16 - 1
MAX_PIXELS = 2**31  # an RLE's runs are 32-bit in pycocotools; no dataset image comes near
MAX_RUN_CHARS = 7  # 35 bits: enough for any run or run difference of an image below MAX_PIXELS
RLE_CHUNK = 4096  # counts strings parsed together
RLE_FIX = "a segmentation is a COCO RLE {'size': [height, width], 'counts': str}, as pycocotools.mask.encode " \
          "writes it (counts decoded to str)"


def read_predictions(path: str | Path, max_label: int = MAX_LABEL, label_space: str = "cluster or part ids",
                     allow_empty: bool = False) -> list[dict]:
    """The segment records of a JSON list or JSON Lines file, each checked (see the module's docstring).

    `max_label` and `label_space` narrow the labels (e.g. to a dataset's part ids for the identity
    mapping). A file without records is refused unless `allow_empty`: scored, it reads 0 everywhere.
    """
    path = Path(path)
    records = _parse(path)
    if not records and not allow_empty:
        raise PredictionError(
            f"{path} holds no prediction records, so every metric would read 0; check that the method wrote its "
            "predictions, or pass --allow-empty (partdistill evaluate; eval.allow_empty=true for stage=evaluate) "
            "to score an empty file"
        )
    check_records(records, str(path), max_label, label_space)
    return records


def _parse(path: Path) -> list:
    if not path.is_file():
        raise PredictionError(f"prediction file {path} does not exist" if not path.exists() else
                              f"prediction file {path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PredictionError(f"{path} is not UTF-8 text (byte {exc.start}); JSON files are UTF-8; {FIX}") from exc
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PredictionError(f"{path} is not a valid JSON list ({exc}); {FIX}") from exc
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PredictionError(f"{path}: line {number} is not JSON ({exc.msg}, column {exc.colno}); the file "
                                      f"is neither a JSON list nor JSON Lines (one record per line); {FIX}") from exc
    return records


def check_records(records: list, source: str, max_label: int = MAX_LABEL, label_space: str = "cluster or part ids") -> None:
    """Raises a PredictionError naming the first bad record; fields are checked in the order image_id,
    label, score, segmentation, each over all records at once."""

    def fail(i, field: str, problem: str, fix: str) -> None:
        raise PredictionError(f"{source}: record {int(i)} field {field!r}: {problem}; {fix}")

    for i in _first(records, lambda r: type(r) is dict):
        raise PredictionError(f"{source}: record {i} is not a JSON object but {_show(records[i])}; {FIX}")
    for i in _first(records, set(KEYS).issubset):
        raise PredictionError(f"{source}: record {i} lacks {sorted(set(KEYS) - records[i].keys())}; {FIX}")

    ids = [r["image_id"] for r in records]
    for i in _first_of_types(ids, (int, str)):
        fail(i, "image_id", f"{_show(ids[i])} is no image id", "use the dataset records' own image_id values and type")

    labels = [r["label"] for r in records]
    space = f"labels are ints 0..{max_label} ({label_space})"
    for i in _first_of_types(labels, (int,)):
        fail(i, "label", f"{_show(labels[i])} is not an integer", space)
    values = _as_array(labels, np.int64)
    for i in _first_true(values, lambda v: (v < 0) | (v > max_label)):
        fail(i, "label", f"{labels[i]} is out of range", space)

    scores = [r["score"] for r in records]
    finite = "scores must be finite numbers (they decide which segment wins where segments overlap)"
    for i in _first_of_types(scores, (int, float)):
        fail(i, "score", f"{_show(scores[i])} is not a finite number", finite)
    for i in _first_true(_as_array(scores, np.float64), lambda v: ~np.isfinite(v)):
        fail(i, "score", f"{_show(scores[i])} is not a finite number", finite)

    segs = [r["segmentation"] for r in records]
    for i in _first_of_types(segs, (dict,)):
        fail(i, "segmentation", f"{_show(segs[i])} is not a COCO RLE object", RLE_FIX)
    for key in ("size", "counts"):
        for i in _first(segs, lambda seg, key=key: key in seg):
            fail(i, "segmentation", f"lacks {key!r}", RLE_FIX)
    sizes = [s["size"] for s in segs]
    for i in _first(sizes, lambda v: type(v) is list and len(v) == 2 and type(v[0]) is int and type(v[1]) is int
                    and 0 <= v[0] < MAX_PIXELS and 0 <= v[1] < MAX_PIXELS):
        fail(i, "segmentation", f"size must be [height, width] (two ints), not {_show(sizes[i])}", RLE_FIX)
    counts = [s["counts"] for s in segs]
    for i in _first_of_types(counts, (str,)):
        fail(i, "segmentation", f"counts must be a string, not {_show(counts[i])} (an uncompressed RLE: compress "
             "it with pycocotools.mask.frPyObjects)", RLE_FIX)
    pixels = np.array(sizes, np.int64).reshape(-1, 2).prod(axis=1)
    for i in _first_true(pixels, lambda v: v >= MAX_PIXELS):
        fail(i, "segmentation", f"size {sizes[i]} has 2^31 pixels or more", RLE_FIX)
    totals = rle_run_totals(counts)
    for i in _first_true(totals, lambda v: v != pixels):
        h, w = sizes[i]
        problem = (f"counts {_show(counts[i])} are not a COCO RLE string" if totals[i] < 0 else
                   f"its runs cover {totals[i]} pixels, not {h} x {w} = {h * w}")
        fail(i, "segmentation", problem, RLE_FIX)


def _first(values: list, ok) -> list[int]:
    """[index of the first value for which ok(value) is false] or []."""
    if all(map(ok, values)):
        return []
    return [next(i for i, v in enumerate(values) if not ok(v))]


def _first_true(values: np.ndarray | int, bad) -> list[int]:
    """[index of the first element where the array test bad(values) holds] or []; an int is that index."""
    if isinstance(values, int):
        return [values]
    return np.flatnonzero(bad(values))[:1].tolist()


def _first_of_types(values: list, types: tuple) -> list[int]:
    """[index of the first value whose type is not one of `types`] or []; a bool is no int here."""
    if set(map(type, values)) <= set(types):  # one pass in C for the common, all-good case
        return []
    return [next(i for i, v in enumerate(values) if type(v) not in types)]


def _as_array(values: list, dtype) -> np.ndarray | int:
    """The values as an array, or the index of the first one too large for `dtype` (e.g. 2**70, 10**400)."""
    try:
        return np.array(values, dtype)
    except OverflowError:
        for i, v in enumerate(values):
            try:
                np.array(v, dtype)
            except OverflowError:
                return i
        raise


def _show(value, limit: int = 40) -> str:
    """A value as the file spells it (JSON: true, null, NaN), cut to `limit` characters for a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rle_run_totals(counts: Sequence[str]) -> np.ndarray:
    """Per COCO RLE counts string, the sum of its run lengths (the pixels it covers); -1 where it is no
    valid string: a character outside '0'..'o', a number that does not end, one over MAX_RUN_CHARS
    characters, or a negative run.

    The format (pycocotools' rleToString): each run is a number of 5-bit groups, low bits first, one
    character each (value + 48), 0x20 marking that another group follows and 0x10 in the last group the
    sign; from the fourth run on, a number is the difference to the run two places before. pycocotools'
    decode() refuses runs that overflow the mask but leaves it partly uninitialised when they fall short,
    so the total must be checked before decoding. The strings are parsed a chunk at a time, as numpy
    arrays: chunks of a few MB reuse memory that whole-file arrays would page-fault in afresh (3-6x slower).
    """
    chunks = [_run_totals(counts[i : i + RLE_CHUNK]) for i in range(0, len(counts), RLE_CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


def _run_totals(counts: Sequence[str]) -> np.ndarray:
    n = len(counts)
    bad = np.fromiter((not s.isascii() for s in counts), bool, n)
    if bad.any():
        counts = [("" if b else s) for s, b in zip(counts, bad)]
    lengths = np.fromiter(map(len, counts), np.int64, n)
    offsets = np.cumsum(lengths)  # where each string ends
    chars = np.frombuffer("".join(counts).encode("ascii"), np.uint8) - np.uint8(48)  # 0..63 when valid
    invalid = chars > 63  # below '0' wraps around to 208..255
    if invalid.any():
        bad[np.searchsorted(offsets, np.flatnonzero(invalid), side="right")] = True
    ends = chars < 32  # no continuation bit (0x20): the character ends its number
    last = offsets[lengths > 0] - 1
    bad[np.flatnonzero(lengths > 0)[~ends[last]]] = True  # the string stops inside a number
    ends[last] = True  # so that no number runs on into the next string
    stops = np.flatnonzero(ends)
    starts = np.empty_like(stops)
    starts[:1], starts[1:] = 0, stops[:-1] + 1
    size = stops - starts + 1  # characters per number; nearly always 1
    values = (chars[starts] & 0x1F).astype(np.int64)
    longer = np.flatnonzero(size > 1)
    for k in range(1, MAX_RUN_CHARS):
        values[longer] |= (chars[starts[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
        longer = longer[size[longer] > k + 1]
    sign = np.flatnonzero(chars[stops] & 0x10)
    values[sign] -= np.int64(1) << (5 * np.minimum(size[sign], MAX_RUN_CHARS))  # sign-extend the last group
    per_string = np.diff(np.r_[0, np.searchsorted(stops, offsets)])
    string = np.repeat(np.arange(n), per_string)  # the string of each number
    bad[string[longer]] = True  # numbers still longer than MAX_RUN_CHARS
    # Run m > 2 is its number plus run m - 2: sums along runs 1, 3, 5... and 2, 4, 6... of each string,
    # taken as running sums over every second number of all strings, less the sum before the string.
    first = np.cumsum(per_string) - per_string  # the first number of each string
    odd = (np.arange(len(values)) - first[string]) & 1
    head = first[per_string > 0]  # run 0 of each string: it starts no chain
    chained = values.copy()
    chained[head] = 0
    summed = np.empty_like(chained)
    summed[0::2], summed[1::2] = np.cumsum(chained[0::2]), np.cumsum(chained[1::2])
    padded = np.r_[0, summed]  # padded[i + 1] = summed[i]; padded[0]: nothing before the first string
    before = np.where(odd, padded[first][string], padded[np.minimum(first + 1, len(summed))][string])
    runs = summed - before
    runs[head] = values[head]
    bad[string[runs < 0]] = True
    totals = np.r_[0, np.cumsum(runs)]
    return np.where(bad, -1, totals[first + per_string] - totals[first])


def group_by_image(predictions: list[dict], dataset: Iterable[dict], source: str = "predictions") -> dict:
    """image_id -> its segment records; errors name the record whose image or size does not match."""
    sizes = {r["image_id"]: (r["height"], r["width"]) for r in dataset}
    grouped: dict = defaultdict(list)
    for i, rec in enumerate(predictions):
        image_id = rec["image_id"]
        if image_id not in sizes:
            example = next(iter(sizes), None)
            raise PredictionError(
                f"{source}: record {i} has image_id {image_id!r} ({type(image_id).__name__}), which is not in the "
                f"dataset; use the dataset records' own image_id values and type (e.g. {example!r})"
            )
        if tuple(rec["segmentation"]["size"]) != tuple(sizes[image_id]):
            raise PredictionError(
                f"{source}: record {i} (image_id {image_id!r}) has an RLE of size {rec['segmentation']['size']}, "
                f"but the image is {list(sizes[image_id])} (height, width); encode masks at the original image size"
            )
        grouped[image_id].append(rec)
    return grouped


def to_prediction(segments: list[dict], height: int, width: int) -> Prediction:
    """Dense masks of one image's segment records."""
    if not segments:
        return Prediction.empty(height, width)
    return Prediction(
        np.stack([masks.decode(s["segmentation"]) for s in segments]),
        np.array([s["label"] for s in segments], np.int64),
        np.array([s["score"] for s in segments], np.float32),
    )


def from_prediction(image_id, prediction: Prediction) -> list[dict]:
    """Segment records of a Prediction, ready to be written as a prediction file."""
    return [
        {"image_id": image_id, "segmentation": masks.encode(m), "label": int(label), "score": float(score)}
        for m, label, score in zip(prediction.masks, prediction.labels, prediction.scores)
    ]
