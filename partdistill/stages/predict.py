"""`partdistill predict`: a trained part model on one's own images, outside the evaluation suites.

    partdistill predict --weights RUN_DIR/distillation --images photos/ --object-class disc --out preds/

The model (`trained_models`: a stage folder, checkpoint, run folder or exported folder) runs over the images
at the input size its training used, in batches, on the GPU when there is one. Its head decides what is
predicted: proposals (the top-k class-agnostic masks), semantic (one mask per part class) or, for the
distilled model, the parts of one object whose class selects the head's K outputs (`object_parts`). That
class comes from `object_class` (all images), `class_file` (per image), the annotations of `dataset`
(`dataset_objects`: every annotated object, its mask and class, as stage=evaluate conditions) or the top
instance of an object model (which also gives the object's mask, and runs at the part model's input size; without one the
object is the whole image); each image's source is written out. Outputs in `out`: predictions.jsonl in the evaluation file format (`partdistill
evaluate` scores it; with `dataset`, image ids are that dataset's), overlays/<image>.png (image | parts,
with a legend) and summary.json (per image: its class and where it came from; the unreadable images).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from partdistill.data import catalog
from partdistill.data.class_map import counterparts
from partdistill.data.images import IMAGE_SUFFIXES, list_images, read_class_file
from partdistill.errors import UserError
from partdistill.evaluation.figures import Panel, save_grid
from partdistill.evaluation.predictions import from_prediction
from partdistill.evaluation.samples import Prediction
from partdistill.io import write_json_atomic, write_text_atomic
from partdistill.models.mask2former import build_model
from partdistill.models.outputs import image_logits, top_instances
from partdistill.paths import project_root
from partdistill.stages import inference
from partdistill.stages.trained_models import (
    class_names,
    find_head,
    label_names,
    load_head_model,
    trained_folder,
)

SHOWN_PROPOSALS = 8  # an overlay of more overlapping proposals than this is unreadable


@dataclass
class ObjectClass:
    """What conditions the distilled head for one image: a training class index (None: unconditioned)."""

    index: int | None
    source: str


def resolve_class(value: str, keys: Sequence[str], names: Sequence[str]) -> int | None:
    """The training class `value` names: a class key (class-2, n02690373), a class name (disc), or None."""
    for candidates in (keys, names):
        if value in candidates:
            return list(candidates).index(value)
    return None


def _class_or_error(value: str, keys: Sequence[str], names: Sequence[str], where: str) -> int:
    index = resolve_class(value, keys, names)
    if index is None:
        shown = ", ".join(f"{k} ({n})" if k != n else k for k, n in list(zip(keys, names))[:20])
        raise UserError(f"{where}: {value!r} is not one of the model's {len(keys)} training classes; give a class key "
                        f"or name: {shown}{' ...' if len(keys) > 20 else ''}")
    return index


def object_model_class(name: str, keys: Sequence[str], names: Sequence[str]) -> int | None:
    """The training class of an object model's class name: itself, else its ImageNet counterparts (the table
    of datasets/metadata/imagenet_counterparts.yaml, any dataset listing that name)."""
    index = resolve_class(name, keys, names)
    if index is not None:
        return index
    for table in counterparts().values():
        for wnid in table.get(name, []):
            if wnid in keys:
                return list(keys).index(wnid)
    return None


def fixed_classes(images: list[dict], head: dict, object_class: str | None, class_file: str | None,
                  object_model: bool) -> list:
    """Per image its ObjectClass from `class_file`, else `object_class`; None where neither gives one, left to
    the object model's top instance (without one, such an image is an error)."""
    keys, names = list(head["classes"]), class_names(head)
    default = None if object_class is None else ObjectClass(
        _class_or_error(object_class, keys, names, "--object-class"), f"--object-class {object_class}")
    given = read_class_file(Path(class_file), images) if class_file else {}
    classes = [ObjectClass(_class_or_error(given[i["image_id"]], keys, names, f"{class_file} ({i['image_id']})"),
                           str(class_file)) if i["image_id"] in given else default for i in images]
    missing = [i["image_id"] for i, c in zip(images, classes) if c is None]
    if missing and not object_model:
        raise UserError(f"{class_file}: no class for {len(missing)} image(s): {', '.join(map(str, missing[:5]))}"
                        f"{' ...' if len(missing) > 5 else ''}; add them, or give --object-class NAME for the rest")
    return classes


def load_object_model(source: str, device):
    """An instance-segmentation Mask2Former (a save_pretrained folder or hub id), as `model.pretrained` loads it."""
    return build_model({"name": "object_model", "pretrained": source}).eval().to(device)


def overlay_name(image_id) -> str:
    """A file name for an image's overlay: its id without the image suffix, folders joined by "__"."""
    stem = str(image_id)
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix.lower() in IMAGE_SUFFIXES else stem
    return (re.sub(r"[^\w.-]+", "_", stem.replace("/", "__")).strip("_.") or "image") + ".png"


class Predictor:
    """Turns one batch's outputs into each image's Prediction, overlay label map and object class."""

    def __init__(self, head: dict, proposals: int, object_model=None, object_source: str = "",
                 dataset_objects: str | None = None):
        self.head, self.kind, self.k = head, head["kind"], proposals
        self.object_model, self.object_source = object_model, object_source
        self.dataset = dataset_objects  # every annotated object of this dataset's records, as stage=evaluate
        if dataset_objects is not None:
            self.annotated = inference.parts_of_head(head, catalog.metadata(dataset_objects, project_root()),
                                                     dataset_objects)
        self.labels = label_names(head)
        if self.kind == "conditioned_parts":
            self.keys, self.names = list(head["classes"]), class_names(head)

    def __call__(self, outputs, batch, samples: list[dict], fixed: list) -> list[tuple]:
        """[(Prediction, overlay labels [H, W], legend names, panel title, ObjectClass or None)] per sample."""
        if self.kind == "proposals":
            return [self._proposals(instances, sample) for instances, sample in
                    zip(top_instances(outputs, batch, k=self.k), samples)]
        if self.kind == "semantic":
            predictions = inference.semantic()(outputs, batch, [s["record"] for s in samples])
            return [(p, p.label_map(), dict(enumerate(self.labels)), "parts", None) for p in predictions]
        if self.dataset is not None:
            predictions = self.annotated(outputs, batch, [s["record"] for s in samples])
            names = {k: f"part {k}" for k in range(int(self.head["num_parts"]))}
            source = ObjectClass(None, f"--dataset-objects: each annotated object of {self.dataset}, its class")
            return [(p, p.label_map(), names, "parts of the annotated objects", source) for p in predictions]
        objects = [None] * len(samples)
        if self.object_model is not None:
            with torch.no_grad():
                found = self.object_model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
            objects = [top[0] if top else None for top in top_instances(found, batch, k=1)]
        padded = batch.pixel_values.shape[-2:]
        results = []
        for i, (obj, given) in enumerate(zip(objects, fixed)):
            original = batch.original_sizes[i]
            cls = given or self._class_of(obj)
            mask = torch.ones(original, dtype=torch.bool) if obj is None else torch.from_numpy(obj["mask"])
            logits = image_logits(outputs.masks_queries_logits[i], padded, batch.image_sizes[i], original)
            parts = inference.parts_in_mask(outputs.class_queries_logits[i], logits, mask.to(logits.device),
                                            cls.index, int(self.head["num_parts"]))
            prediction = Prediction.empty(*original) if parts is None else Prediction(
                parts[0], parts[1].astype(np.int64), parts[2].astype(np.float32))
            if cls.index is None:  # unconditioned: labels are c x K + k over every class
                names, what = dict(enumerate(self.labels)), "parts (no class: all classes' labels)"
            else:
                names, what = {k: f"part {k}" for k in range(int(self.head["num_parts"]))}, \
                    f"parts of {self.names[cls.index]}"
            where = "" if obj is None else " inside the object"
            results.append((prediction, prediction.label_map(), names, f"{what}{where}", cls))
        return results

    def _class_of(self, obj: dict | None) -> ObjectClass:
        if obj is None:
            return ObjectClass(None, f"object model {self.object_source}: no instance found; unconditioned")
        name = self.object_model.config.id2label.get(obj["label"], str(obj["label"]))
        index = object_model_class(name, self.keys, self.names)
        found = f"object model {self.object_source}: top instance {name!r} (score {obj['score']:.2f})"
        return ObjectClass(index, found if index is not None else
                           f"{found}, no counterpart among the training classes; unconditioned")

    def _proposals(self, instances: list[dict], sample: dict) -> tuple:
        height, width = sample["image"].shape[:2]
        if not instances:
            return Prediction.empty(height, width), np.full((height, width), -1), {}, "proposals", None
        prediction = Prediction(np.stack([i["mask"] for i in instances]), np.zeros(len(instances), np.int64),
                                np.array([i["score"] for i in instances], np.float32))
        shown = Prediction(prediction.masks[:SHOWN_PROPOSALS], np.arange(min(len(instances), SHOWN_PROPOSALS)),
                           prediction.scores[:SHOWN_PROPOSALS])
        names = {j: f"#{j + 1} ({s:.2f})" for j, s in enumerate(shown.scores)}
        return prediction, shown.label_map(), names, f"top {len(names)} proposals", None


def check_options(head: dict, object_class, class_file, object_model, dataset_objects: bool = False,
                  dataset: str | None = None) -> None:
    """Class options belong to the distilled head, which cannot run without one of them."""
    if dataset_objects and not dataset:
        raise UserError("--dataset-objects takes the objects of a dataset's annotations: give --dataset NAME too "
                        "(e.g. --dataset synthetic_val)")
    given = [flag for flag, value in (("--object-class", object_class), ("--classes", class_file),
                                      ("--object-model", object_model), ("--dataset-objects", dataset_objects))
             if value]
    if dataset_objects and len(given) > 1:
        raise UserError(f"{', '.join(given)}: --dataset-objects gives every object its class from the annotations; "
                        "leave the other class options out")
    if head["kind"] != "conditioned_parts" and given:
        raise UserError(f"{', '.join(given)}: only a distilled (class-conditioned) model takes an object class; this "
                        f"model's head is {head['kind']!r}: leave them out")
    if head["kind"] == "conditioned_parts" and not given:
        shown = ", ".join(class_names(head)[:20])
        raise UserError(f"this distilled model predicts the parts of an object of a given class: give --object-class "
                        f"NAME (for every image), --classes FILE (a class per image), --object-model FOLDER (its "
                        f"top instance) or --dataset NAME --dataset-objects (each annotated object); its classes: "
                        f"{shown}")


def device_for(device: str) -> torch.device:
    """auto: the GPU when there is one, else the CPU; a GPU asked for where there is none is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device {device}: {exc}; give auto, cpu, cuda or cuda:N") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no usable GPU (torch.cuda.is_available() is false); "
                        "give --device cpu or auto")
    return target


def _class_fields(cls: ObjectClass | None, head: dict) -> dict:
    """An image's object class (a training class key; None: unconditioned) and where it came from."""
    if cls is None:  # not a distilled model
        return {}
    key = None if cls.index is None else head["classes"][cls.index]
    return {"object_class": key, "object_class_source": cls.source}


def predict(weights: str | Path, images: Sequence[str], out: str | Path, object_class: str | None = None,
            class_file: str | None = None, object_model: str | None = None, dataset: str | None = None,
            batch_size: int = 8, device: str = "auto", workers: int | None = None, proposals: int = 200,
            dataset_objects: bool = False) -> dict:
    """Runs the model of `weights` over `images` (files, folders, list files); writes predictions.jsonl,
    overlays/ and summary.json to `out`; returns the summary."""
    folder = trained_folder(Path(weights).resolve())
    head = find_head(folder)
    check_options(head, object_class, class_file, object_model, dataset_objects, dataset)
    records = list_images(images, catalog.load(dataset, project_root()) if dataset else None, dataset)
    distilled = head["kind"] == "conditioned_parts"
    fixed = fixed_classes(records, head, object_class, class_file, bool(object_model)) \
        if distilled and not dataset_objects else [None] * len(records)
    target = device_for(device)
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: give at least 1")
    model = load_head_model(folder, head, target)
    predictor = Predictor(head, proposals, load_object_model(object_model, target) if object_model else None,
                          object_model or "", dataset if dataset_objects else None)
    fixed_of = {r["image_id"]: f for r, f in zip(records, fixed)}
    out = Path(out)
    lines, done, skipped = [], [], []
    with tqdm(total=len(records), desc="predicting", unit="image", disable=None) as bar:
        for samples, batch, outputs in inference.predict_batches(model, records, int(head["image_size"]), target,
                                                                 batch_size, workers, skipped):
            results = predictor(outputs, batch, samples, [fixed_of[s["record"]["image_id"]] for s in samples])
            for sample, (prediction, overlay, names, title, cls) in zip(samples, results):
                image_id = sample["record"]["image_id"]
                lines += [json.dumps(segment) for segment in from_prediction(image_id, prediction)]
                png = out / "overlays" / overlay_name(image_id)
                save_grid(png, [[Panel("image", sample["image"]), Panel(title, sample["image"], overlay, names)]])
                done.append({"image_id": image_id, "file_name": sample["record"]["file_name"],
                             "segments": len(prediction.labels), "overlay": str(png), **_class_fields(cls, head)})
            bar.update(len(done) + len(skipped) - bar.n)
        bar.update(len(done) + len(skipped) - bar.n)  # unreadable images of the last batches
    write_text_atomic(out / "predictions.jsonl", "".join(line + "\n" for line in lines))
    summary = {"weights": str(folder), "head": head["kind"], "image_size": int(head["image_size"]),
               "device": str(target), "images": len(records), "predicted": len(done), "segments": len(lines),
               "skipped": [{"file_name": s["record"]["file_name"], "reason": s["skipped"]} for s in skipped],
               "per_image": done}
    write_json_atomic(out / "summary.json", summary, indent=2)
    return summary


def format_summary(summary: dict, out: Path) -> str:
    """What `partdistill predict` prints: counts, where the outputs went, where classes came from, what was skipped."""
    lines = [(f"{summary['head']} model {summary['weights']} on {summary['device']}: {summary['predicted']} of "
              f"{summary['images']} image(s), {summary['segments']} segment(s) -> {out / 'predictions.jsonl'}, "
              f"overlays in {out / 'overlays'}")]
    sources = sorted({i["object_class_source"] for i in summary["per_image"] if "object_class_source" in i})
    if sources:
        lines.append("object class from: " + "; ".join(sources[:5]) + (" ..." if len(sources) > 5 else ""))
    if summary["skipped"]:
        lines.append(f"{len(summary['skipped'])} unreadable image(s) skipped:")
        lines += [f"  {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)
