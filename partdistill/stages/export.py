"""`partdistill export`: a trained part model as a transformers model folder, to hand to someone.

    partdistill export --weights RUN_DIR/distillation --out distilled-parts/

The folder is what `Mask2FormerForUniversalSegmentation.from_pretrained(folder)` loads (config.json with
`id2label` naming each output, model.safetensors), plus partdistill.json (the head.json of the training
stage: what the head is, its classes, the input size; with it `partdistill predict --weights FOLDER`,
`stage=evaluate model.weights=FOLDER` and `model.pretrained=FOLDER` take the folder as they take the run)
and a model card, README.md: what it was trained on, the run's metrics, how to run it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from partdistill.models.export import (
    WEIGHTS_FILE,
    is_pretrained_folder,
    save_pretrained_folder,
)
from partdistill.models.inputs import PIXEL_MEAN, PIXEL_STD
from partdistill.models.weights import resolve_model_file
from partdistill.stages.trained_models import (
    EXPORT_FILE,
    class_names,
    find_head,
    label_names,
    load_head_model,
    trained_folder,
)

FORMAT = 1


def describe(head: dict) -> str:
    """What the head predicts, in one sentence."""
    kind = head["kind"]
    if kind == "proposals":
        return "class-agnostic part proposals: every query is a part mask scored by label 0 ('part')"
    if kind == "semantic":
        return (f"semantic part segmentation: one output per part class of {head.get('dataset')} "
                f"({head['num_labels']} classes)")
    k, c = int(head["num_parts"]), len(head["classes"])
    return (f"class-conditioned parts: K x C + 1 = {k} x {c} + 1 outputs, K part clusters for each of C object "
            f"classes then no-object; an object of class c is read from outputs c*K .. c*K+K-1 (softmax over them "
            f"and no-object), so its parts are labelled 0..K-1")


def stage_metrics(folder: Path) -> dict:
    """The metrics.json the training stage wrote (its last step and last evaluation), or {} where there is none."""
    for candidate in (folder / "metrics.json", folder.parent / "metrics.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return {}


def model_card(head: dict, info: dict) -> str:
    """README.md of an exported folder."""
    metrics = info["metrics"]
    shown = {**{k: v for k, v in metrics.get("eval", {}).items() if isinstance(v, (int, float))},
             **{k: metrics[k] for k in ("iterations", "total_loss") if k in metrics}}
    table = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items())
    data = head.get("train_data") or head.get("train_split") or "(not recorded)"
    classes = ""
    if head["kind"] == "conditioned_parts":
        classes = "\nObject classes (index: key, name): " + ", ".join(
            f"{i}: {k} ({n})" for i, (k, n) in enumerate(zip(head["classes"], head["class_names"]))) + "\n"
    object_option = f" --object-class {head['class_names'][0]}" if head["kind"] == "conditioned_parts" else ""
    normalize = ("\nThe head reads L2-normalised query embeddings (`query_feature_normalize`): with transformers "
                 "alone, register `model.class_predictor.register_forward_pre_hook(lambda m, a: "
                 "(torch.nn.functional.normalize(a[0], dim=-1),))` before running it.\n"
                 if head.get("query_feature_normalize") else "")
    return f"""# partdistill {head.get('stage', 'model')} model

A Mask2Former trained by partdistill (PartDistillation, CVPR 2023), stage `{head.get('stage')}`, on
`{data}`, model config `{head['model']['name']}`; exported from `{info['source']}`.

Head: {describe(head)}.
{classes}
## Metrics (the training stage's metrics.json)

{'| metric | value |' + chr(10) + '|---|---|' + chr(10) + table if table else 'No metrics recorded.'}

## Run it

    partdistill predict --weights THIS_FOLDER --images photos/{object_option} --out predictions/

or with transformers alone:

    from transformers import Mask2FormerForUniversalSegmentation
    model = Mask2FormerForUniversalSegmentation.from_pretrained("THIS_FOLDER").eval()

Input: RGB resized to fit {head['image_size']} x {head['image_size']}, normalised with mean {list(PIXEL_MEAN)} and
std {list(PIXEL_STD)} (0-255 scale), zero-padded to a multiple of 32 (`pixel_mask` 1 on the image). Outputs:
`class_queries_logits` [B, Q, {head['num_labels']} + 1] and `masks_queries_logits` [B, Q, H/4, W/4].
{normalize}`partdistill.json` holds the head as the training stage described it.
"""


def export_model(weights: str | Path, out: str | Path) -> dict:
    """Writes the model of `weights` (stage folder, checkpoint, run folder or exported folder) to `out`;
    returns what partdistill.json says."""
    folder = trained_folder(Path(weights).resolve())
    head = dict(find_head(folder))
    if head["kind"] == "conditioned_parts":
        head["class_names"] = class_names(head)
    model = load_head_model(folder, head, torch.device("cpu"))
    if folder.is_dir() and is_pretrained_folder(folder):  # an exported folder exported again
        source, metrics = folder / WEIGHTS_FILE, json.loads((folder / EXPORT_FILE).read_text()).get("metrics", {})
    else:
        source = resolve_model_file(folder)
        metrics = stage_metrics(folder.parent if folder.is_file() else folder)
    info = {"format": FORMAT, "head": head, "labels": label_names(head), "description": describe(head),
            "source": str(source), "metrics": metrics,
            "input": {"size": int(head["image_size"]), "pixel_mean": list(PIXEL_MEAN), "pixel_std": list(PIXEL_STD),
                      "size_divisibility": 32}}
    save_pretrained_folder(model, Path(out), info["labels"], {EXPORT_FILE: json.dumps(info, indent=2) + "\n",
                                                            "README.md": model_card(head, info)})
    return info
