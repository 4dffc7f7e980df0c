"""The allowed range of every numeric option, checked right after composition.

The schemas type each value; this module says which values of that type a run can use, so that
`stage.kmeans.k=0` or `stage.solver.max_iter=0` stops before a model is built or a job is
submitted, with the key, the value and the range, instead of a traceback hours later (or a run
that trains nothing and reports success). Rules go by the option's own name, which means the
same thing wherever it appears (`batch_size` of a partitioned stage and of evaluate alike).
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from partdistill.errors import ConfigError

Rule = tuple[Callable[[object], bool], str]


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low), f"at least {low:g}"


def _positive() -> Rule:
    return (lambda v: v > 0), "greater than 0"


def _within(low: float, high: float, open_low: bool = False) -> Rule:
    bracket = "(" if open_low else "["
    return (lambda v: (v > low if open_low else v >= low) and v <= high), f"in {bracket}{low:g}, {high:g}]"


SIZE = _at_least(32)  # the backbone downsamples by 32: a smaller input has no feature map left
FRACTION = _within(0, 1)

RULES: dict[str, Rule] = {
    # partitioned stages
    "num_partitions": _at_least(1), "batch_size": _at_least(1), "image_size": SIZE,
    # k-means (pixel grouping) and part ranking
    "k": _at_least(1), "iters": _at_least(1), "n_init": _at_least(1), "tol": _at_least(0),
    "num_clusters": _at_least(1), "detections_per_image": _at_least(1), "kmeans_iters": _at_least(1),
    "kmeans_n_init": _at_least(1), "kmeans_tol": _at_least(0),
    "min_area_ratio_1": FRACTION, "min_area_ratio_2": FRACTION, "min_object_iou": FRACTION,
    # training stages
    "ims_per_batch": _at_least(1), "base_lr": _positive(), "max_iter": _at_least(1), "gamma": _positive(),
    "warmup_iters": _at_least(0), "warmup_factor": _within(0, 1, open_low=True), "weight_decay": _at_least(0),
    "backbone_multiplier": _at_least(0), "train_num_points": _at_least(1), "oversample_ratio": _at_least(1),
    "importance_sample_ratio": FRACTION, "base_size": SIZE, "crop_relative": _within(0, 1, open_low=True),
    "min_scale": _positive(), "max_scale": _positive(), "retries": _at_least(1),
    "eval_period": _at_least(1), "checkpoint_period": _at_least(1), "keep_checkpoints": _at_least(1),
    "num_workers": _at_least(0), "eval_images": _at_least(1), "eval_batch_size": _at_least(1),
    "min_object_area_ratio": FRACTION, "min_area_ratio": FRACTION, "num_part_classes": _at_least(1),
    "fraction": _within(0, 1, open_low=True), "subset_seed": _at_least(0),
    # report, evaluation, model, resources
    "images": _at_least(1), "random_seeds": _at_least(1), "overlays": _at_least(0), "proposals": _at_least(1),
    "min_gt_iou": _within(0, 1), "num_queries": _at_least(1), "hidden_dim": _at_least(1),
    "decoder_layers": _at_least(1), "embed_dim": _at_least(1), "window_size": _at_least(1),
    "nodes": _at_least(1), "gpus_per_node": _at_least(0), "tasks_per_node": _at_least(1), "seed": _at_least(0),
}
# why a value is needed, where the key alone does not say it
HINTS = {
    "max_iter": "a training stage needs at least one iteration",
    "k": "clusters per object",
    "image_size": "the backbone downsamples by 32",
    "base_size": "the backbone downsamples by 32",
    "fraction": "the share of training images, e.g. 0.01 for 1 %, 1.0 for all",
}
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _numbers(node, path: str) -> Iterable[tuple[str, str, object]]:
    """(dotted key, option name, value) of every number below `node` (lists: each element)."""
    items = node.items() if isinstance(node, DictConfig) else enumerate(node)
    for key, value in items:
        full = f"{path}.{key}" if path else str(key)
        name = key if isinstance(node, DictConfig) else path.rsplit(".", 1)[-1]
        if isinstance(value, (DictConfig, ListConfig)):
            yield from _numbers(value, full)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield full, str(name), value


def problems(cfg: DictConfig) -> list[str]:
    """One line per value of `cfg` outside its range (empty when all are fine)."""
    found = []
    mine = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    plain = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(mine), resolve=True, enum_to_str=True))
    for key, name, value in _numbers(plain, ""):
        rule = RULES.get(name)
        if rule is None:
            continue
        ok, allowed = rule
        if (isinstance(value, float) and math.isnan(value)) or not ok(value):
            hint = f" ({HINTS[name]})" if name in HINTS else ""
            found.append(f"{key}={value}: must be {allowed}{hint}")
    for stage in _stages(plain):
        found += _stage_problems(stage, plain)
    if not str(plain.run_dir).strip():
        found.append("run_dir='': give the folder the run's outputs go to (the default is "
                     "$PART_DISTILLATION_ROOT/runs/<experiment>_<data>)")
    if not DEVICE.match(str(plain.device)):
        found.append(f"device={plain.device}: choose auto, cpu, cuda or cuda:N")
    return found


def _stages(plain: DictConfig) -> list[tuple[str, DictConfig]]:
    if plain.stage.name == "pipeline":
        return [(f"stage.{name}", plain.stage[name]) for name in plain.stage.stages]
    return [("stage", plain.stage)]


def check_partition(stage: DictConfig) -> None:
    """A partitioned stage's `stage.partition` must be null (all) or one of 0..P-1."""
    total, index = stage.num_partitions, stage.get("partition")
    if index is not None and not 0 <= index < total:
        raise ConfigError(f"stage.partition={index} is outside 0..{total - 1} (stage.num_partitions={total})")


def _stage_problems(where_stage: tuple[str, DictConfig], plain: DictConfig) -> list[str]:
    where, stage = where_stage
    aug = stage.get("augmentation")
    if aug is not None and aug.min_scale > aug.max_scale:
        return [f"{where}.augmentation.min_scale={aug.min_scale} is above max_scale={aug.max_scale}"]
    return []


def check(cfg: DictConfig) -> None:
    """Raises ConfigError listing every value of `cfg` outside its range."""
    found = problems(cfg)
    if found:
        raise ConfigError("partdistill: the config has values no run can use; nothing was run or submitted.\n  "
                          + "\n  ".join(found))
