"""What the parts of `bench_gpu.py` share: timing, the config a stage runs with, models, generated images.

Timing follows the same rule everywhere: `warmup` untimed calls (allocator, cuDNN/cuBLAS heuristics,
lazy initialisation), then `repeat` timed calls and their median (one slow call, e.g. a garbage
collection, does not move it). On a GPU each call is timed between two CUDA events on the current
stream after a synchronisation, so the figure is GPU time from the first kernel to the last, host
gaps between kernels included (they cost the GPU that time too). CPU work (the scikit-learn
baseline, the loader) is timed on the wall clock.
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from partdistill.config import compose
from partdistill.data import masks, planted
from partdistill.models.mask2former import build_model

# Image and class counts of the training sets: the data configs name the sets but hold no counts
# (conf/data/imagenet_*.yaml state them in their comments only); the train split of ILSVRC-2012
# and the fall-2011 ImageNet-21K release, the 1.28M and 14.2M of the paper.
DATASETS = {"imagenet_1k": {"images": 1_281_167, "classes": 1000},
            "imagenet_22k": {"images": 14_197_122, "classes": 21_841}}


def median_time(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> dict:
    """{"median_s", "times_s"} of `fn()` (module docstring: events on a GPU, wall clock on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the start event must not wait behind earlier work
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return {"median_s": statistics.median(times), "times_s": [round(t, 6) for t in times]}


def autocast(device: torch.device, precision: str):
    """bf16 autocast as the engine trains (`precision="bf16"`), or nothing (`"fp32"`: how the
    inference stages run today, with no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def stage_config(experiment: str, stage: str, model: list[str], extra: list[str] = ()):
    """The config `python launch.py experiment=... stage=...` runs the stage with, `model` overrides
    included (e.g. `model=m2f_swin_large model.pretrained=null`: the paper's model, random weights)."""
    return compose([f"experiment={experiment}", f"stage={stage}", *model, *extra])


def build_on(cfg_model, device: torch.device, num_labels: int | None = None):
    """`models.mask2former.build_model` with the parameters created on `device`: a random Swin-L
    initialises in a second there instead of ~10 s on the host. Falls back to building on the host
    and moving (the same model, slower) if the library refuses the device context."""
    try:
        with torch.device(device):
            model = build_model(cfg_model, num_labels=num_labels)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        logging.getLogger(__name__).warning("building on %s failed (%s); building on the host", device, exc)
        model = build_model(cfg_model, num_labels=num_labels)
    return model.to(device)


def free(device: torch.device) -> None:
    """Returns freed tensors' memory to the device, so the next measurement's peak starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def is_oom(exc: BaseException) -> bool:
    # cuBLAS and cuDNN report a failed workspace allocation in their own words
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


def make_items(folder: Path, count: int, height: int, width: int, seed: int = 0, distinct: int = 32) -> list[dict]:
    """`count` ImageNet-sized JPEG files, each with one planted object of 4 parts (about 45 % of the
    image, ~2,000 points on the res3 grid at 640 as real ImageNet objects): training items of
    `data.augmentation.InstanceDataset` ({"file_name", "segments", "labels"}) with the object's mask
    (RLE, "object") for the grouping and ranking passes. `distinct` scenes are drawn (~0.1 s each)
    and written to `count` files in turn: reading and augmenting costs the same whatever the content,
    and drawing hundreds would take a large share of the GPU run's time."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    for i in range(min(count, distinct)):
        scene = planted.draw_scene(np.random.default_rng([seed, i]), height, width, [4], [0])
        jpeg = io.BytesIO()
        Image.fromarray(scene.image).save(jpeg, format="JPEG", quality=90)
        obj = scene.objects[0]
        segments = [masks.encode(m) for m in obj.part_masks if m.any()]
        drawn.append((jpeg.getvalue(), {"segments": segments, "labels": [0] * len(segments),
                                        "object": masks.encode(obj.mask)}))
    items = []
    for i in range(count):
        data, annotations = drawn[i % len(drawn)]
        path = folder / f"{i:05d}.JPEG"
        path.write_bytes(data)
        items.append({"file_name": str(path), **annotations})
    return items


def device_info(device: torch.device) -> dict:
    """What the figures were measured on and with (the device's versions differ from the pins)."""
    import platform

    import sklearn
    import transformers

    info = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, multiprocessors=props.multi_processor_count)
    return info
