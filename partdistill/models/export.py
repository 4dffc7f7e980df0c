"""A trained Mask2Former as a transformers model folder: what `from_pretrained(folder)` loads.

`save_pretrained_folder` is the one writer of such folders: the instance model of `instance_training`
(which the next stages load through `model.pretrained=`) and `partdistill export` (a trained part model
handed to someone without partdistill). The folder holds config.json (with `id2label`) and
model.safetensors as transformers writes them, plus any `files` (a model card, partdistill's own
description of the head), and appears all at once: a reader never sees half of it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from partdistill.io import output_mode
from partdistill.models.mask2former import quiet_transformers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def is_pretrained_folder(path: Path) -> bool:
    """Whether `path` is a folder written by save_pretrained (config.json + model.safetensors)."""
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def save_pretrained_folder(model, folder: Path, labels: Sequence[str], files: Mapping[str, str] | None = None) -> None:
    """Writes `model` with save_pretrained, its classes named by `labels` (id2label / label2id), and
    `files` (name -> text) into a temporary folder beside `folder`, then renames it over `folder`."""
    folder = Path(folder)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with quiet_transformers():
            model.save_pretrained(staging)
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
        for path in staging.iterdir():  # safetensors writes model.safetensors 0600, hiding it from a team
            os.chmod(path, output_mode())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
