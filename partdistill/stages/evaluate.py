"""Stage `evaluate`: score predictions on the suite chosen by `eval=` and write the results.

    python launch.py stage=evaluate eval=pascal_parts eval.predictions=preds.json
    python launch.py -m stage=evaluate eval=pascal_parts,part_imagenet,cityscapes_part eval.predictions=...

Results go to the job's output folder (metrics.json, per-class CSVs, summary.md, overlays/); a
multirun ends with one summary table of all its jobs (partdistill.evaluation.summary).
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from partdistill.config.resolver import project_root
from partdistill.evaluation.report import headline
from partdistill.evaluation.saved import evaluate_saved
from partdistill.plan import ConfigError
from partdistill.stages.common import output_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    ev = cfg.eval
    if ev.predictions is None:
        raise ConfigError(
            "stage=evaluate scores a prediction file: set eval.predictions=FILE (a JSON list or JSON Lines of "
            "{image_id, segmentation (COCO RLE), label, score}); running a model over the suite is not "
            "available in this version"
        )
    matched = ev.match_split != ev.split
    if matched and ev.match_predictions is None:
        raise ConfigError(f"eval.match_split={ev.match_split} differs from eval.split={ev.split}: "
                          "set eval.match_predictions=FILE, the predictions on the match split")
    dataset = f"{ev.dataset}_{ev.split}"
    out = output_dir(cfg)
    results = evaluate_saved(
        dataset, ev.predictions, out,
        match_dataset=f"{ev.dataset}_{ev.match_split}" if matched else None,
        match_predictions=ev.match_predictions if matched else None,
        mapping=ev.mapping.value, object_class=ev.object_class.value, min_gt_iou=ev.min_gt_iou,
        overlays=ev.overlays, root=project_root(), extra={"suite": ev.suite},
    )
    top = headline(results)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in top.items() if isinstance(v, float))
    print(f"evaluate {dataset}: {shown}  ({out}/metrics.json)")
    return top
