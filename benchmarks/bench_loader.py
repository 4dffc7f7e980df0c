"""Training-loader throughput at the paper's settings: samples/s per worker, and workers per 256/s.

Reads ImageNet-sized JPEGs (default 500 x 375, planted objects with 4 parts as RLE part masks, the
pixel-grouping store's format) through `data.augmentation.InstanceDataset`: decode, RLE decode, the
paper's augmentation (fit 640, flip, relative crop 0.9, scale jitter 0.1-2.0, fixed 640 crop), and
normalisation; the baseline in the same run is the decode alone (PIL + RLE, no augmentation).
One process, one thread: a DataLoader worker's share. The paper's batch of 256 per iteration at
about one iteration per second (8 nodes x 8 GPUs) needs 256 samples/s per job.

Both sides must see the same data: each of the first 8 samples (checked after the timing) holds a
640 x 640 image and between one and all of the masks the baseline decodes for its item, each with a
label. `--smoke` does it all on 4 images in about a second (tests/test_benchmarks.py); its rates
mean nothing.

    python benchmarks/bench_loader.py [--images 64] [--height 375] [--width 500] [--smoke]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from partdistill.config.schema import AugmentationConfig
from partdistill.data import masks, planted
from partdistill.data.images import read_rgb
from partdistill.data.augmentation import InstanceDataset
from partdistill.models.inputs import to_model_sample


def make_items(folder: Path, count: int, height: int, width: int) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        scene = planted.draw_scene(rng, height, width, [4], [0])
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(scene.image).save(path, quality=90)
        segments = [masks.encode(m) for m in scene.objects[0].part_masks]
        items.append({"file_name": str(path), "segments": segments, "labels": [0] * len(segments)})
    return items


def timed(fn, items) -> tuple[float, float]:
    """Samples per wall second, and per CPU second of this process (what other jobs on a shared
    machine disturb less; one thread, so the two agree on an idle one)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(len(items)):
        fn(i)
    return len(items) / (time.perf_counter() - wall), len(items) / (time.process_time() - cpu)


def check(segments: list[np.ndarray], sample: dict, size: int) -> None:
    """The sample is a training sample of the item: the fixed-size crop, and the masks that survived it."""
    n = len(sample["mask_labels"])
    assert sample["pixel_values"].shape == (3, size, size), sample["pixel_values"].shape
    assert 1 <= n <= len(segments) and sample["mask_labels"].shape[1:] == (size, size), sample["mask_labels"].shape
    assert len(sample["class_labels"]) == n and all(s.any() for s in segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--smoke", action="store_true", help="4 images: checks that it runs and agrees")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(images=4)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker's share
    with tempfile.TemporaryDirectory() as tmp:
        items = make_items(Path(tmp), args.images, args.height, args.width)
        aug = OmegaConf.structured(AugmentationConfig())
        dataset = InstanceDataset(items, aug, to_model_sample)
        decode = lambda i: (read_rgb(items[i]["file_name"]), [masks.decode(r) for r in items[i]["segments"]])  # noqa: E731
        decode_only = timed(decode, items)
        augmented = timed(lambda i: dataset[(i, 1000 + i)], items)
        for i in range(min(len(items), 8)):  # untimed, so the rates stay those of the loops alone
            check(decode(i)[1], dataset[(i, 1000 + i)], aug.base_size)
    print(f"{args.images} images of {args.width}x{args.height}, 4 parts each, 640 crops, one thread")
    print("| step | samples/s per worker (wall) | samples per CPU second | workers for 256 samples/s (wall) |")
    print("|---|---:|---:|---:|")
    for step, (wall, cpu) in (("decode only (baseline)", decode_only), ("decode + augmentation + targets", augmented)):
        print(f"| {step} | {wall:.1f} | {cpu:.1f} | {int(np.ceil(256 / wall))} |")
    print(f"augmentation costs {decode_only[0] / augmented[0]:.2f}x the decode alone "
          f"({decode_only[1] / augmented[1]:.2f}x in CPU time)")


if __name__ == "__main__":
    main()
