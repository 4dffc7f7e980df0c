"""What a training stage left on disk, loaded again: its head.json, its model with the newest weights, and
the inference its head needs. Shared by `evaluate`, `report`, `partdistill predict` and `partdistill export`;
stages meet only through these files.

A trained model is named by a training stage's folder (RUN_DIR/distillation), its checkpoints folder, one
of its checkpoints, a run folder (its distillation model), or a folder written by `partdistill export`
(config.json + model.safetensors + partdistill.json, which carries the head.json).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from partdistill.data import catalog
from partdistill.errors import ConfigError, UserError
from partdistill.models.conditioned_head import normalize_queries
from partdistill.models.export import is_pretrained_folder
from partdistill.models.mask2former import build_model
from partdistill.paths import project_root
from partdistill.stages import inference
from partdistill.stages.common import device_of
from partdistill.stages.inference import parts_of_head
from partdistill.stages.training import HEAD_FILE

log = logging.getLogger(__name__)
EXPORT_FILE = "partdistill.json"  # in an exported folder: {"format": 1, "head": <head.json>, ...}
RUN_MODEL = "distillation"  # the model a run folder stands for: the method's result


def trained_folder(weights: Path) -> Path:
    """`weights` itself, or for a run folder (it holds stage folders, not a head.json) its distillation folder."""
    weights = Path(weights)
    if not weights.is_dir() or (weights / HEAD_FILE).is_file() or (weights / EXPORT_FILE).is_file():
        return weights
    if (weights / RUN_MODEL / HEAD_FILE).is_file():
        return weights / RUN_MODEL
    trained = sorted(str(p.parent) for p in [*weights.glob(f"*/{HEAD_FILE}"), *weights.glob(f"*/*/{HEAD_FILE}")])
    if trained and not (weights / "checkpoints").is_dir() and weights.name != "checkpoints":
        raise UserError(f"{weights}: a run folder without a trained {RUN_MODEL} model; name one of its trained "
                        f"models instead: {', '.join(trained[:8])}")
    return weights


def find_head(weights: Path) -> dict:
    """The head.json of a training stage folder, its checkpoints folder or a checkpoint file in it, or the
    head an exported folder carries in its partdistill.json."""
    weights = Path(weights)
    if weights.is_dir() and (weights / EXPORT_FILE).is_file():
        return json.loads((weights / EXPORT_FILE).read_text())["head"]
    folder = weights if weights.is_dir() else weights.parent
    for candidate in (folder / HEAD_FILE, folder.parent / HEAD_FILE):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    if not weights.exists():
        raise ConfigError(f"model weights {weights}: no such file or folder")
    raise ConfigError(f"model weights {weights}: no {HEAD_FILE} in {folder} or {folder.parent}; give a folder "
                      "written by a partdistill training stage (e.g. RUN_DIR/distillation), one of its checkpoints "
                      "or a folder written by partdistill export")


def build_trained_model(options: dict, weights: Path, head: dict, device):
    """The model of `head` (its class head size) built from the model `options` with `weights` loaded (an
    exported folder: loaded with from_pretrained, its own config.json), in eval mode on `device`."""
    options = dict(options)
    if Path(weights).is_dir() and is_pretrained_folder(Path(weights)):
        options.update(pretrained=str(weights), weights=None)
    else:
        options["weights"] = str(weights)
    model = build_model(options, num_labels=head["num_labels"])
    if head.get("query_feature_normalize"):
        normalize_queries(model)
    return model.eval().to(device)


def load_trained_model(cfg: DictConfig, weights: Path, head: dict):
    """The model of `head` (its class head size) with `weights` loaded, in eval mode on the run's device."""
    if head["model"]["name"] != cfg.model.name:
        raise ConfigError(f"{weights} was trained with model={head['model']['name']}, this run has "
                          f"model={cfg.model.name}: add model={head['model']['name']}")
    return build_trained_model(OmegaConf.to_container(cfg.model, resolve=True), weights, head, device_of(cfg))


def load_head_model(weights: Path, head: dict, device):
    """The model of `head`, built from the model config its training stage recorded in head.json."""
    return build_trained_model(head["model"], weights, head, device)


def class_names(head: dict) -> list[str]:
    """Readable names of a distilled head's training classes (class keys: `class-<id>` or wnids), from the
    metadata of the data it was trained on where that is on disk, else the keys themselves."""
    if "class_names" in head:  # an exported head carries them
        return list(head["class_names"])
    keys = list(head.get("classes", []))
    try:
        meta = catalog.metadata(head["train_data"], project_root())
    except (UserError, OSError, KeyError) as exc:
        log.info("no class names for %s (%s): using the class keys", head.get("train_data"), exc)
        return keys
    by_key = {wnid: name for wnid, name in zip(meta.extra.get("wnids", []), meta.thing_classes)}
    by_key.update({f"class-{i}": name for i, name in enumerate(meta.thing_classes)})
    return [by_key.get(key, key) for key in keys]


def label_names(head: dict) -> list[str]:
    """One name per label of the head: "part" (proposals), "<class>: part <k>" for label c x K + k of a
    distilled head, the dataset's part classes for a semantic one."""
    kind = head["kind"]
    if kind == "conditioned_parts":
        return [f"{name}: part {k}" for name in class_names(head) for k in range(int(head["num_parts"]))]
    if kind == "semantic":
        return list(head.get("part_classes") or [f"part {i}" for i in range(int(head["num_labels"]))])
    return ["part"] * int(head["num_labels"])


def to_predictions_for(head: dict, cfg: DictConfig, dataset_name: str):
    """The inference that turns this head's outputs into evaluator predictions on `dataset_name`."""
    kind = head["kind"]
    if kind == "proposals":
        return inference.proposals(k=int(cfg.eval.proposals))
    if kind == "semantic":
        if head.get("dataset") != cfg.eval.dataset:
            raise ConfigError(f"this model's head predicts the part classes of {head.get('dataset')}; it cannot be "
                              f"scored on eval={cfg.eval.suite}: use eval=<its suite>")
        return inference.semantic()
    if kind == "conditioned_parts":
        return parts_of_head(head, catalog.metadata(dataset_name, project_root()), dataset_name)
    raise ConfigError(f"unknown head kind {kind!r} in {HEAD_FILE}")
