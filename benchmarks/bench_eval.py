"""Evaluation hot spots: confusion accumulation and the mask IoU matrix, each against a baseline.

(a) `PartMIoUEvaluator.process` (one bincount per batch) against the straightforward per-object loop
    over (label, part) pairs with `np.sum((pred == k) & (gt == p))`. Both decode the same records
    and build the same label maps; timed again with those served from a cache, which leaves the
    accumulation alone. The counts must be identical.
(b) `mask_iou` (one float32 matrix product) against `pycocotools.mask.iou`, timed with the RLE
    encoding of the dense masks (what a caller holding model output pays) and without it. The IoUs
    must agree within 1e-6.

Each time is the best of --repeat runs (fewer for cases slower than 5 s in all). `--smoke` runs the
same cases and checks at tiny sizes in a few seconds (tests/test_benchmarks.py); its times mean nothing.

    python benchmarks/bench_eval.py [--smoke]
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from unittest import mock

import numpy as np
from pycocotools import mask as mask_utils

from partdistill.data.catalog import Metadata
from partdistill.data.records import object_record, part_record
from partdistill.evaluation import part_miou, samples
from partdistill.evaluation.proposals import mask_iou
from partdistill.evaluation.samples import Prediction, class_space, object_samples

# sizes: the confusion case (objects, object size, predicted labels, parts) and the mask IoU cases
# (masks, GT masks, side); the smoke sizes keep the labels and parts, so the same loops run
SIZES = {"full": {"confusion": (200, 100, 8, 5), "iou": [(200, 10, 256), (1000, 1000, 64)]},
         "smoke": {"confusion": (8, 30, 8, 5), "iou": [(20, 10, 32), (60, 60, 16)]}}
META = Metadata(thing_classes=["thing"], part_classes=[f"part{i}" for i in range(5)], parts_of={0: list(range(5))})


def best_of(repeat: int, fn, budget: float = 5.0) -> tuple[float, object]:
    """The fastest of `repeat` timed calls; calls stop early once `budget` seconds are spent (slow cases)."""
    best, result, spent = float("inf"), None, 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        spent += time.perf_counter() - start
        if spent > budget:
            break
    return best, result


# -- (a) confusion accumulation ---------------------------------------------------------------
def ellipse(shape, cy, cx, ry, rx) -> np.ndarray:
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def confusion_case(rng, objects: int, size: int, labels: int, parts: int) -> tuple[list[dict], list[Prediction]]:
    """Images of 2 x 2 objects of about size x size, parts as angular sectors (a ring of no part
    outside them), predictions as `labels` Voronoi cells with some pixels uncovered."""
    records, preds, side = [], [], 2 * size + 20
    for i in range(0, objects, 4):
        anns = []
        for cy, cx in [(size // 2 + 5, size // 2 + 5), (size // 2 + 5, 1.5 * size + 15),
                       (1.5 * size + 15, size // 2 + 5), (1.5 * size + 15, 1.5 * size + 15)]:
            obj = ellipse((side, side), cy, cx, size / 2 * rng.uniform(0.8, 1), size / 2 * rng.uniform(0.8, 1))
            ys, xs = np.mgrid[:side, :side]
            sector = ((np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi) * parts).astype(int) % parts
            inner = ellipse((side, side), cy, cx, size * 0.42, size * 0.42)
            anns.append(object_record(0, obj, [part_record(p, obj & inner & (sector == p)) for p in range(parts)]))
        records.append({"image_id": i, "height": side, "width": side, "annotations": anns})
        seeds = rng.uniform(0, side, size=(labels, 2))
        ys, xs = np.mgrid[:side, :side]
        cell = np.argmin((ys[None] - seeds[:, :1, None]) ** 2 + (xs[None] - seeds[:, 1:, None]) ** 2, axis=0)
        covered = rng.random((side, side)) < 0.95
        masks = np.stack([(cell == k) & covered for k in range(labels)])
        preds.append(Prediction(masks, np.arange(labels), rng.random(labels).astype(np.float32)))
    return records, preds


class CachedLabels:
    """A prediction whose label map is already built, to time the accumulation alone."""

    def __init__(self, label_map: np.ndarray):
        self.labels = label_map

    def label_map(self) -> np.ndarray:
        return self.labels


@contextmanager
def decoded_inputs(records, preds):
    """Serves both accumulations their decoded objects from a cache; yields the cached predictions and
    a count of the objects lists served.

    The evaluator decodes through `samples.scored_pixels`, which looks `object_samples` up in its own
    module, so that is where the cache goes in; the baseline looks it up in this module."""
    _, parts_of, to_class = class_space(META)
    cache = {id(r): object_samples(r, parts_of, to_class) for r in records}
    served = {"calls": 0}

    def lookup(record, *_):
        served["calls"] += 1
        return cache[id(record)]

    with mock.patch.object(samples, "object_samples", lookup), mock.patch.dict(globals(), object_samples=lookup):
        yield [CachedLabels(p.label_map()) for p in preds], served


def evaluator_counts(records, preds) -> np.ndarray:
    ev = part_miou.PartMIoUEvaluator(META)
    ev.process(records, preds)
    return ev.counts


def baseline_counts(records, preds, labels: int) -> np.ndarray:
    """The straightforward loop: one masked sum per (object, label, part)."""
    _, parts_of, to_class = class_space(META)
    max_parts = max(len(p) for p in parts_of.values())
    counts = np.zeros((1, labels + 1, max_parts + 1), np.int64)
    for record, prediction in zip(records, preds):
        label_map = prediction.label_map()
        for sample in object_samples(record, parts_of, to_class):
            pred, gt = sample.crop(label_map), sample.part_map
            for k in range(-1, labels):
                for p in range(sample.num_parts + 1):
                    col = max_parts if p == sample.num_parts else p
                    counts[sample.object_class, k + 1, col] += np.sum((pred == k) & (gt == p) & sample.mask)
    return counts


# -- (b) mask IoU ------------------------------------------------------------------------------
def mask_stack(rng, n: int, side: int, kind: str) -> np.ndarray:
    """[n, side, side] bool: random ellipses (compact) or i.i.d. pixels at density 0.3 (fragmented)."""
    if kind == "fragmented":
        return rng.random((n, side, side)) < 0.3
    c = rng.uniform(0, side, size=(n, 2))
    r = rng.uniform(side / 10, side / 2, size=(n, 2))
    ys, xs = np.ogrid[:side, :side]
    return ((ys[None] - c[:, :1, None]) / r[:, :1, None]) ** 2 + ((xs[None] - c[:, 1:, None]) / r[:, 1:, None]) ** 2 <= 1


def encode(stack: np.ndarray) -> list[dict]:
    return mask_utils.encode(np.asfortranarray(stack.transpose(1, 2, 0).astype(np.uint8)))


def coco_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return mask_utils.iou(encode(a), encode(b), [0] * len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it runs and agrees")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(repeat=1)
    args = parser.parse_args()
    sizes = SIZES["smoke" if args.smoke else "full"]
    rng = np.random.default_rng(args.seed)
    rows = []

    objects, size, labels, parts = sizes["confusion"]
    records, preds = confusion_case(rng, objects, size, labels, parts)
    t_eval, ours = best_of(args.repeat, lambda: evaluator_counts(records, preds))
    t_base, theirs = best_of(args.repeat, lambda: baseline_counts(records, preds, labels))
    np.testing.assert_array_equal(ours, theirs)
    with decoded_inputs(records, preds) as (cached, served):
        t_eval_acc, ours = best_of(args.repeat, lambda: evaluator_counts(records, cached))
        # if the evaluator stopped decoding through `object_samples`, the "decoded" row would time the
        # decode again without saying so
        assert served["calls"] >= len(records), "the evaluator no longer reads objects through object_samples"
        t_base_acc, theirs = best_of(args.repeat, lambda: baseline_counts(records, cached, labels))
    np.testing.assert_array_equal(ours, theirs)
    name = f"confusion, {objects} obj ~{size}x{size}, {labels} labels, {parts} parts"
    rows.append((name, "process (bincount)", "loop over (label, part)", t_eval, t_base))
    rows.append((name + ", decoded", "process (bincount)", "loop over (label, part)", t_eval_acc, t_base_acc))

    for n, p, side in sizes["iou"]:
        for kind in ("compact", "fragmented"):
            a, b = mask_stack(rng, n, side, kind), mask_stack(rng, p, side, kind)
            ra, rb = encode(a), encode(b)
            t_ours, ours = best_of(args.repeat, lambda: mask_iou(a.reshape(n, -1), b.reshape(p, -1)))
            t_coco, theirs = best_of(args.repeat, lambda: coco_iou(a, b))
            t_rle, _ = best_of(args.repeat, lambda: mask_utils.iou(ra, rb, [0] * p))
            assert np.abs(ours - theirs).max() <= 1e-6
            name = f"mask IoU, {n}x{p} of {side}x{side}, {kind}"
            rows.append((name, "mask_iou", "pycocotools (with encode)", t_ours, t_coco))
            rows.append((name, "mask_iou", "pycocotools (RLEs given)", t_ours, t_rle))

    print(f"{'case':<64} {'ours':<20} {'baseline':<26} {'ours s':>9} {'base s':>9} {'ratio':>7}")
    for name, ours_name, base_name, t_ours, t_base in rows:
        print(f"{name:<64} {ours_name:<20} {base_name:<26} {t_ours:9.4f} {t_base:9.4f} {t_base / t_ours:6.1f}x")
    print("ratio = baseline / ours; 'decoded': objects and label maps served from a cache (accumulation alone)")


if __name__ == "__main__":
    main()
