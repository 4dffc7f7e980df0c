"""The report's pictures: one PNG per stage (rows of val images: image | ground-truth parts | that stage's
output; object_masks and part_ranking, which run on the training set only, on training images) and a "journey" PNG (rows of training images: image | ground truth | grouping | proposals |
ranking | distilled parts), all drawn by `evaluation.figures` (upscaled, titled, with legends).

Everything is read from run_dir (the stores, the grouping's and the evaluation's prediction files) or
computed by running the saved models on the few images shown; a stage that has not run is left out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from partdistill.data import catalog, masks
from partdistill.data.images import read_rgb
from partdistill.evaluation.figures import Panel, save_grid
from partdistill.evaluation.predictions import (
    group_by_image,
    read_predictions,
    to_prediction,
)
from partdistill.evaluation.pseudo_labels import label_map
from partdistill.models.mask2former import build_model
from partdistill.paths import project_root
from partdistill.stages.common import device_of
from partdistill.stages.inference import predict_records, proposals
from partdistill.stages.trained_models import (
    find_head,
    load_trained_model,
    to_predictions_for,
)
from partdistill.store import Store, StoreMissing


def _gt_parts(record: dict) -> np.ndarray:
    out = np.full((record["height"], record["width"]), -1, np.int64)
    for annotation in record.get("annotations", []):
        for part in annotation.get("parts", []):
            out[masks.decode(part["segmentation"]).astype(bool)] = part["category_id"]
    return out


def _gt_objects(record: dict) -> np.ndarray:
    out = np.full((record["height"], record["width"]), -1, np.int64)
    for annotation in record.get("annotations", []):
        out[masks.decode(annotation["segmentation"]).astype(bool)] = annotation["category_id"]
    return out


def _model_maps(cfg: DictConfig, folder: Path, records: list[dict], dataset: str, kind: str,
                loaded: dict) -> list[np.ndarray] | None:
    """Label maps of a trained stage's model on `records`: proposals by rank (top 10), parts by label;
    `loaded` keeps each folder's (head, model), so the val figures and the journey load a model once."""
    if not (folder / "head.json").is_file():
        return None
    if folder not in loaded:
        head = find_head(folder)
        loaded[folder] = head, load_trained_model(cfg, folder, head)
    head, model = loaded[folder]
    to_predictions = proposals(10) if kind == "proposals" else to_predictions_for(head, cfg, dataset)
    maps = {}
    for chunk, predictions in predict_records(model, records, to_predictions, int(head["image_size"]),
                                              device_of(cfg), 8):
        maps |= {r["image_id"]: p.winner_map() if kind == "proposals" else p.label_map()
                 for r, p in zip(chunk, predictions)}
    return [maps.get(r["image_id"]) for r in records]  # None: the image could not be read


def _instance_maps(cfg: DictConfig, records: list[dict]) -> list[np.ndarray] | None:
    # the instance model the method starts from: model.pretrained (the demo's instance_training export)
    options = {**OmegaConf.to_container(cfg.model, resolve=True), "weights": None}
    if not options["pretrained"] or not (Path(options["pretrained"]).expanduser() / "config.json").is_file():
        return None
    model = build_model(options).eval().to(device_of(cfg))
    size = int(model.config.backbone_config.image_size)
    maps = {r["image_id"]: p.label_map() if len(p.masks) else np.full(p.masks.shape[1:], -1)
            for chunk, preds in predict_records(model, records, proposals(1), size, device_of(cfg), 8)
            for r, p in zip(chunk, preds)}
    return [maps.get(r["image_id"]) for r in records]  # None: the image could not be read


def _store_maps(run_dir: Path, stage: str, image_ids: list) -> dict:
    try:
        store = Store.open(run_dir / "store", stage)
    except StoreMissing:
        return {}
    return {r["image_id"]: label_map(r)[0] for r in store.records() if r["image_id"] in set(image_ids)}


def write_figures(cfg: DictConfig, folder: Path, count: int) -> list[Path]:
    run_dir, ev = Path(cfg.run_dir), cfg.eval
    val_name = f"{ev.dataset}_{ev.split}"
    meta = catalog.metadata(val_name, project_root())
    parts = dict(enumerate(meta.part_classes))
    objects = dict(enumerate(meta.thing_classes))
    val = [r for r in catalog.load(val_name, project_root()) if r["annotations"]][:count]
    images = [np.asarray(read_rgb(r["file_name"])) for r in val]
    written, loaded = [], {}

    def figure(name: str, title: str, outputs: list[np.ndarray] | None, names=None, gt=_gt_parts, gt_names=parts):
        if outputs is None:
            return
        rows = [[Panel("image", image), Panel("ground truth", image, gt(r), gt_names), Panel(title, image, out, names)]
                for r, image, out in zip(val, images, outputs)]
        save_grid(folder / f"{name}.png", rows, title=f"{name}: {title} ({val_name})")
        written.append(folder / f"{name}.png")

    with torch.no_grad():
        figure("instance_training", "top instance", _instance_maps(cfg, val), objects, _gt_objects, objects)
        grouping = run_dir / "pixel_grouping" / ev.suite / "grouping_predictions.json"
        if grouping.is_file():
            shown = {r["image_id"] for r in val}
            by_image = group_by_image([p for p in read_predictions(grouping) if p["image_id"] in shown], val,
                                      str(grouping))
            figure("pixel_grouping", "k-means clusters",
                   [to_prediction(by_image.get(r["image_id"], []), r["height"], r["width"]).label_map() for r in val],
                   {c: f"cluster {c}" for c in range(16)})
        figure("proposal_learning", "top 10 proposals", _model_maps(cfg, run_dir / "proposal_learning", val, val_name,
                                                                    "proposals", loaded), {c: f"proposal {c + 1}" for c in range(10)})
        figure("distillation", "distilled parts", _model_maps(cfg, run_dir / "distillation", val, val_name, "parts", loaded),
               {c: f"part cluster {c}" for c in range(16)})
        written += write_store_figures(cfg, folder, count)
        journey = write_journey(cfg, folder / "journey.png", count, loaded)
    return written + ([journey] if journey else [])


def write_store_figures(cfg: DictConfig, folder: Path, count: int) -> list[Path]:
    """object_masks and part_ranking run on the training images: their store records beside the ground truth."""
    run_dir = Path(cfg.run_dir)
    meta = catalog.metadata(cfg.data.train, project_root())
    train = {r["image_id"]: r for r in catalog.load(cfg.data.train, project_root())}
    written = []
    for stage, title, gt, gt_names in (
            ("object_masks", "kept instance", _gt_objects, dict(enumerate(meta.thing_classes))),
            ("part_ranking", "part clusters", _gt_parts, dict(enumerate(meta.part_classes)))):
        try:
            records = sorted(Store.open(run_dir / "store", stage).records(), key=lambda r: str(r["image_id"]))[:count]
        except StoreMissing:
            continue
        rows = []
        for record in records:
            image = np.asarray(read_rgb(record["file_name"]))
            labels, names = label_map(record)
            rows.append([Panel("image", image), Panel("ground truth", image, gt(train[record["image_id"]]), gt_names),
                         Panel(title, image, labels, names)])
        if rows:
            save_grid(folder / f"{stage}.png", rows, title=f"{stage}: {title} (training images of {cfg.data.train})")
            written.append(folder / f"{stage}.png")
    return written


def write_journey(cfg: DictConfig, path: Path, count: int, loaded: dict | None = None) -> Path | None:
    """Training images through the method: ground truth, grouping, proposals, ranking, distilled parts."""
    run_dir = Path(cfg.run_dir)
    train = {r["image_id"]: r for r in catalog.load(cfg.data.train, project_root())}
    ranking = _store_maps(run_dir, "part_ranking", list(train))
    ids = sorted(ranking)[:count]
    if not ids:
        return None
    records = [train[i] for i in ids]
    images = [np.asarray(read_rgb(r["file_name"])) for r in records]
    grouping = _store_maps(run_dir, "pixel_grouping", ids)
    loaded = {} if loaded is None else loaded
    proposals = _model_maps(cfg, run_dir / "proposal_learning", records, cfg.data.train, "proposals", loaded)
    distilled = _model_maps(cfg, run_dir / "distillation", records, cfg.data.train, "parts", loaded)
    part_names = dict(enumerate(catalog.metadata(cfg.data.train, project_root()).part_classes))
    clusters = {c: f"cluster {c}" for c in range(16)}
    rows = []
    for n, (record, image) in enumerate(zip(records, images)):
        row = [Panel("image", image), Panel("ground truth", image, _gt_parts(record), part_names)]
        if record["image_id"] in grouping:
            row.append(Panel("1. grouping", image, grouping[record["image_id"]], clusters))
        if proposals is not None:
            row.append(Panel("2. proposals", image, proposals[n], {c: f"proposal {c + 1}" for c in range(10)}))
        row.append(Panel("3. ranking", image, ranking[record["image_id"]], clusters))
        if distilled is not None:
            row.append(Panel("4. distilled", image, distilled[n], clusters))
        rows.append(row)
    save_grid(path, rows, title=f"the method on training images of {cfg.data.train}")
    return path
