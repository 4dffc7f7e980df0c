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

from omegaconf import DictConfig, open_dict

from partdistill.config.resolver import project_root
from partdistill.evaluation.report import headline
from partdistill.evaluation.saved import evaluate_saved
from partdistill.plan import ConfigError
from partdistill.stages.common import output_dir
from partdistill.stages.training import HEAD_FILE

log = logging.getLogger(__name__)


def find_head(weights: Path) -> dict:
    """The head.json of a training stage folder, its checkpoints folder or a checkpoint file in it."""
    folder = weights if weights.is_dir() else weights.parent
    for candidate in (folder / HEAD_FILE, folder.parent / HEAD_FILE):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    if not weights.exists():
        raise ConfigError(f"model weights {weights}: no such file or folder")
    raise ConfigError(f"model weights {weights}: no {HEAD_FILE} in {folder} or {folder.parent}; give a folder "
                      "written by a partdistill training stage (e.g. RUN_DIR/distillation) or one of its checkpoints")


def load_trained_model(cfg: DictConfig, weights: Path, head: dict):
    """The model of `head` (its class head size) with `weights` loaded, in eval mode on the run's device."""
    from partdistill.models.mask2former import build_model
    from partdistill.stages.common import device_of

    if head["model"]["name"] != cfg.model.name:
        raise ConfigError(f"{weights} was trained with model={head['model']['name']}, this run has "
                          f"model={cfg.model.name}: add model={head['model']['name']}")
    model_cfg = cfg.model.copy()
    with open_dict(model_cfg):
        model_cfg.weights = str(weights)
    model = build_model(model_cfg, num_labels=head["num_labels"])
    if head.get("query_feature_normalize"):
        from partdistill.models.conditioned_head import normalize_queries

        normalize_queries(model)
    return model.eval().to(device_of(cfg))


def to_predictions_for(head: dict, cfg: DictConfig, dataset_name: str):
    """The inference that turns this head's outputs into evaluator predictions on `dataset_name`."""
    from partdistill.data import catalog
    from partdistill.models import inference

    kind = head["kind"]
    if kind == "proposals":
        return inference.proposals(k=200)
    if kind == "semantic":
        if head.get("dataset") != cfg.eval.dataset:
            raise ConfigError(f"this model's head predicts the part classes of {head.get('dataset')}; it cannot be "
                              f"scored on eval={cfg.eval.suite}: use eval=<its suite>")
        return inference.semantic()
    if kind == "conditioned_parts":
        from partdistill.models.conditioned_head import parts_of_head

        return parts_of_head(head, catalog.metadata(dataset_name, project_root()), dataset_name)
    raise ConfigError(f"unknown head kind {kind!r} in {HEAD_FILE}")


def write_model_predictions(cfg: DictConfig, model, head: dict, split: str, out: Path) -> Path:
    """Runs the model over a split of the suite's dataset; writes predictions-<split>.jsonl atomically."""
    from tqdm import tqdm

    from partdistill.data import catalog
    from partdistill.evaluation.predictions import from_prediction
    from partdistill.io import write_text_atomic
    from partdistill.models.inference import predict_records
    from partdistill.stages.common import device_of

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
    out = output_dir(cfg)
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
    )
    top = headline(results)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in top.items() if isinstance(v, float))
    print(f"evaluate {dataset}: {shown}  ({out}/metrics.json)")
    return top
