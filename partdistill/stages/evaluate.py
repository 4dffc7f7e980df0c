"""Stage `evaluate`: score a trained model, or saved predictions, on the suite chosen by `eval=`.

    python launch.py stage=evaluate eval=pascal_parts model.weights=RUN_DIR/distillation
    python launch.py stage=evaluate eval=pascal_parts eval.predictions=preds.json
    python launch.py -m stage=evaluate eval=pascal_parts,part_imagenet,cityscapes_part model.weights=...

With a model (`stage.weights`, else `model.weights`: a training stage's folder, its checkpoints folder
or one model-*.safetensors), the stage reads the head.json its training stage wrote beside the
checkpoints (head kind, labels, training classes, input size), runs the model over the suite's
split (and its match split, where they differ) and writes the predictions as JSON Lines
(predictions-<split>.jsonl, the `eval.predictions` format, to re-score or share), then scores them:
  proposals (proposal_learning, finetune head=prop): part-proposal AR;
  conditioned_parts (distillation): unsupervised part mIoU, each object conditioned on its class
    mapped into the training classes (`data.class_map`);
  semantic (finetune head=semseg): supervised mIoU (identity mapping) on the dataset it was trained for.
Results go to the job's output folder (metrics.json, per-class CSVs, summary.md, overlays/); a
multirun ends with one summary table of all its jobs (partdistill.evaluation.summary).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from partdistill.data import catalog
from partdistill.errors import ConfigError
from partdistill.evaluation.predictions import from_prediction
from partdistill.evaluation.report import headline
from partdistill.evaluation.saved import evaluate_saved
from partdistill.io import write_text_atomic
from partdistill.paths import project_root
from partdistill.stages.common import device_of, output_dir
from partdistill.stages.inference import predict_records
from partdistill.stages.trained_models import (
    find_head,
    load_trained_model,
    to_predictions_for,
)

log = logging.getLogger(__name__)


def write_model_predictions(cfg: DictConfig, model, head: dict, split: str, out: Path) -> Path:
    """Runs the model over a split of the suite's dataset; writes predictions-<split>.jsonl atomically."""
    from tqdm import tqdm

    name = f"{cfg.eval.dataset}_{split}"
    records = catalog.load(name, project_root())
    to_predictions = to_predictions_for(head, cfg, name)
    lines = []
    batches = predict_records(model, records, to_predictions, int(head["image_size"]), device_of(cfg),
                              int(cfg.stage.batch_size))
    for chunk, predictions in tqdm(batches, total=-(-len(records) // int(cfg.stage.batch_size)),
                                   desc=f"predicting {name}", unit="batch", disable=None):
        for record, prediction in zip(chunk, predictions):
            lines += [json.dumps(segment) for segment in from_prediction(record["image_id"], prediction)]
    path = out / f"predictions-{split}.jsonl"
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def run(cfg: DictConfig) -> dict:
    ev = cfg.eval
    out = Path(cfg.stage.out) if cfg.stage.get("out") else output_dir(cfg)
    weights = cfg.stage.get("weights") or cfg.model.weights
    matched = ev.match_split != ev.split
    mapping = ev.mapping.value
    if ev.predictions is not None:
        predictions, match_predictions = ev.predictions, ev.match_predictions
        if matched and match_predictions is None:
            raise ConfigError(f"eval.match_split={ev.match_split} differs from eval.split={ev.split}: "
                              "set eval.match_predictions=FILE, the predictions on the match split")
    elif weights is not None:
        head = find_head(Path(weights))
        model = load_trained_model(cfg, Path(weights), head)
        predictions = write_model_predictions(cfg, model, head, ev.split, out)
        match_predictions = write_model_predictions(cfg, model, head, ev.match_split, out) if matched else None
        if head["kind"] == "semantic":
            mapping = "identity"  # its labels are the dataset's part classes
    else:
        raise ConfigError(
            "stage=evaluate scores a trained model or a prediction file: set model.weights=RUN_DIR/<stage> (a "
            "training stage's folder or checkpoint), or eval.predictions=FILE (a JSON list or JSON Lines of "
            "{image_id, segmentation (COCO RLE), label, score})"
        )
    dataset = f"{ev.dataset}_{ev.split}"
    results = evaluate_saved(
        dataset, predictions, out,
        match_dataset=f"{ev.dataset}_{ev.match_split}" if matched else None,
        match_predictions=match_predictions if matched else None,
        mapping=mapping, object_class=ev.object_class.value, min_gt_iou=ev.min_gt_iou,
        overlays=ev.overlays, root=project_root(), extra={"suite": ev.suite, "weights": weights},
        allow_empty=ev.allow_empty,
    )
    top = headline(results)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in top.items() if isinstance(v, float))
    print(f"evaluate {dataset}: {shown}  ({out}/metrics.json)")
    return top
