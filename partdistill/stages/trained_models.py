"""What a training stage left on disk, loaded again: its head.json, its model with the newest weights, and
the inference its head needs. Shared by `evaluate` and `report`; stages meet only through these files.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, open_dict

from partdistill.data import catalog
from partdistill.errors import ConfigError
from partdistill.models.conditioned_head import normalize_queries
from partdistill.models.mask2former import build_model
from partdistill.paths import project_root
from partdistill.stages import inference
from partdistill.stages.common import device_of
from partdistill.stages.inference import parts_of_head
from partdistill.stages.training import HEAD_FILE


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
    if head["model"]["name"] != cfg.model.name:
        raise ConfigError(f"{weights} was trained with model={head['model']['name']}, this run has "
                          f"model={cfg.model.name}: add model={head['model']['name']}")
    model_cfg = cfg.model.copy()
    with open_dict(model_cfg):
        model_cfg.weights = str(weights)
    model = build_model(model_cfg, num_labels=head["num_labels"])
    if head.get("query_feature_normalize"):
        normalize_queries(model)
    return model.eval().to(device_of(cfg))


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
