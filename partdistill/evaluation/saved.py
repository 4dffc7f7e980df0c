"""Scoring saved predictions of any method on a dataset: part mIoU (with its mapping) and part AR."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from partdistill.data import catalog
from partdistill.data.images import UnreadableImage, read_rgb
from partdistill.evaluation.coco_ap import PartAPEvaluator
from partdistill.evaluation.figures import Panel, save_grid
from partdistill.evaluation.part_miou import PartMIoUEvaluator
from partdistill.evaluation.predictions import (
    PredictionError,
    group_by_image,
    read_predictions,
    to_prediction,
)
from partdistill.evaluation.proposals import ProposalAREvaluator
from partdistill.evaluation.report import write_results
from partdistill.evaluation.samples import class_space, object_samples
from partdistill.evaluation.supervised import SupervisedMIoUEvaluator

log = logging.getLogger(__name__)
BATCH = 16  # images per evaluator call: one bincount per batch
# supervised mIoU's and COCOeval's numbers as reported; COCO's AR is renamed so it is not read as proposal AR
SUPERVISED_HEADLINE = {"mIoU": "mIoU", "mACC": "mACC", "pixel_acc": "pixel_acc", "AP": "AP", "AP50": "AP50",
                       "AP75": "AP75", "AR@1": "AP-AR@1", "AR@10": "AP-AR@10", "AR@100": "AP-AR@100"}


def _score(evaluators: list, records: list[dict], grouped: dict, desc: str) -> None:
    for start in tqdm(range(0, len(records), BATCH), desc=desc, unit="batch", disable=None):
        batch = records[start : start + BATCH]
        outputs = [to_prediction(grouped.get(r["image_id"], []), r["height"], r["width"]) for r in batch]
        for evaluator in evaluators:
            evaluator.process(batch, outputs)


def evaluate_saved(
    dataset: str,
    predictions: str | Path,
    out_dir: str | Path,
    match_dataset: str | None = None,
    match_predictions: str | Path | None = None,
    mapping: str = "majority",
    object_class: str = "synset",
    min_gt_iou: float = 0.001,
    overlays: int = 4,
    root: str | Path | None = None,
    extra: dict | None = None,
    allow_empty: bool = False,
) -> dict:
    """Scores a prediction file on `dataset` (e.g. "pascal_parts_val"); writes and returns the results.

    The label -> part mapping is learned on `match_dataset` with `match_predictions` when given
    (both or neither), else on `dataset` itself, as the paper does. With mapping="identity" the
    labels are the dataset's part classes, so supervised mIoU (`mIoU`, `mACC`, `pixel_acc`) and
    COCO part AP (`AP`, `AP50`, `AP75`, `AP-AR@1|10|100`) are reported too. `extra` (e.g. the
    suite's name) is stored at the top of metrics.json. Every record is checked before scoring
    (`predictions.check_records`); a file without records is refused unless `allow_empty`.
    """
    if (match_dataset is None) != (match_predictions is None):
        raise PredictionError("give both a match dataset and its predictions, or neither")
    records = catalog.load(dataset, root)
    meta = catalog.metadata(dataset, root)
    read = _reader(meta, mapping, dataset, allow_empty)
    grouped = group_by_image(read(predictions), records, str(predictions))
    miou = PartMIoUEvaluator(meta, mapping, object_class)
    ar = ProposalAREvaluator(meta, min_gt_iou=min_gt_iou, object_class=object_class)
    supervised = [SupervisedMIoUEvaluator(meta, object_class), PartAPEvaluator(meta)] if mapping == "identity" else []
    _score([miou, ar, *supervised], records, grouped, f"scoring {dataset}")
    match = None
    if match_dataset is not None:
        match_meta = catalog.metadata(match_dataset, root)
        if class_space(match_meta, object_class)[0] != miou.class_names:
            raise PredictionError(
                f"{match_dataset} and {dataset} have different object classes, so a mapping learned on one "
                "cannot score the other; with PartImageNet use eval.object_class=supercategory"
            )
        match_records = catalog.load(match_dataset, root)
        match_grouped = group_by_image(read(match_predictions), match_records, str(match_predictions))
        match = PartMIoUEvaluator(match_meta, mapping, object_class)
        _score([match], match_records, match_grouped, f"matching on {match_dataset}")
    results = {**(extra or {}), "dataset": dataset, "predictions": str(predictions),
               **miou.evaluate(match=match), **ar.evaluate()}
    for evaluator in supervised:  # their headline numbers only: the tables above are part mIoU's
        for key, value in evaluator.evaluate().items():
            if key in SUPERVISED_HEADLINE:
                results[SUPERVISED_HEADLINE[key]] = value
    out_dir = Path(out_dir)
    write_results(results, out_dir, f"{dataset}: {predictions}")
    _write_overlays(records, grouped, miou, results["mapping"], out_dir / "overlays", overlays)
    return results


def _reader(meta, mapping: str, dataset: str, allow_empty: bool):
    """read_predictions with the labels the mapping accepts: any cluster id up to MAX_LABEL, or, for the
    identity mapping, the dataset's part ids (another label would silently count as background)."""
    if mapping == "identity":
        last = len(meta.part_classes) - 1
        return partial(read_predictions, max_label=last, label_space=f"the identity mapping: {dataset}'s part ids",
                       allow_empty=allow_empty)
    return partial(read_predictions, allow_empty=allow_empty)


def _write_overlays(records, grouped, miou: PartMIoUEvaluator, mapping: dict, folder: Path, count: int) -> None:
    """PNG overlays of the first `count` images with scored objects: image | GT parts | mapped prediction."""
    part_index = {name: i for i, name in enumerate(miou.part_names)}
    names = dict(enumerate(miou.part_names))
    written = 0
    for record in records:
        samples = object_samples(record, miou.parts_of, miou.to_class)
        if written >= count:
            break
        if not samples:
            continue
        try:
            image = read_rgb(record["file_name"])
        except UnreadableImage as exc:
            log.warning("no overlay for %s", exc)
            continue
        labels = to_prediction(grouped.get(record["image_id"], []), record["height"], record["width"]).label_map()
        gt_map = np.full(labels.shape, -1, np.int64)
        pred_map = np.full(labels.shape, -1, np.int64)
        for s in samples:
            global_ids = np.array(miou.parts_of[s.object_class] + [-1])  # local index -> global id; bg -> -1
            y0, y1, x0, x1 = s.box
            gt_map[y0:y1, x0:x1][s.mask] = global_ids[s.part_map[s.mask]]
            crop = labels[y0:y1, x0:x1][s.mask]
            lut = np.full(int(crop.max(initial=-1)) + 2, -1, np.int64)  # label + 1 -> global part id
            for label, part in mapping.get(miou.class_names[s.object_class], {}).items():
                if label + 1 < len(lut):
                    lut[label + 1] = part_index.get(part, -1)
            pred_map[y0:y1, x0:x1][s.mask] = lut[crop + 1]
        save_grid(folder / f"{record['image_id']}.png", [[
            Panel("image", image), Panel("ground truth", image, gt_map, names),
            Panel("prediction (mapped)", image, pred_map, names)]])
        written += 1
