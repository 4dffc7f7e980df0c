"""Mask2Former (transformers) for the pipeline, built from `conf/model`.

`build_model` loads `model.pretrained` (a local folder or a hub id) or builds a randomly initialised
model from the config alone (`conf/model/tiny.yaml`), then `model.weights` (a partdistill
checkpoint file, checkpoints folder or run folder) when set. Its input: `models/inputs.py`; its
outputs: `models/outputs.py`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import logging
import os
import re
from typing import Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from partdistill.config.schema import BackboneConfig, ModelConfig
from partdistill.errors import ModelConfigError, PretrainedUnavailable
from partdistill.models.weights import load_model_weights

log = logging.getLogger(__name__)

STAGES = ["stage1", "stage2", "stage3", "stage4"]
DEFAULT_NUM_LABELS = 80  # COCO's thing classes, the head of the paper's instance model
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


# ---------------------------------------------------------------------------------------------
# Building


def build_model(model_cfg, num_labels: int | None = None):
    """A `Mask2FormerForUniversalSegmentation` from the `model` config group (DictConfig or dict).

    `num_labels` (classes, without no-object) replaces a pretrained head of another size with a new,
    randomly initialised one; a model built from config gets `num_labels` or 80.
    """
    options = _model_options(model_cfg)
    with quiet_transformers():
        if options["pretrained"]:
            model = _load_pretrained(options["pretrained"], num_labels)
        else:
            from transformers import Mask2FormerForUniversalSegmentation

            model = Mask2FormerForUniversalSegmentation(_mask2former_config(options, num_labels))
    if options.get("weights"):
        load_model_weights(model, options["weights"])
    return model


def _model_options(model_cfg) -> dict:
    """The config as a plain dict with the schema's defaults, after checking its keys and types."""
    raw = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    _check_keys(raw, ModelConfig, "model")
    if isinstance(raw.get("backbone"), Mapping):
        _check_keys(raw["backbone"], BackboneConfig, "model.backbone")
    try:  # the schema's defaults and type checks, as Hydra composition would apply them
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), raw)
    except OmegaConfBaseException as exc:
        raise ModelConfigError(f"invalid model config: {exc}") from exc
    options = OmegaConf.to_container(merged, resolve=True)
    backbone = options["backbone"]
    if backbone["type"] not in ("swin", "resnet"):
        raise ModelConfigError(f"model.backbone.type={backbone['type']!r}: choose swin or resnet")
    for key in ("depths",) + (("num_heads",) if backbone["type"] == "swin" else ()):
        if len(backbone[key]) != len(STAGES):
            raise ModelConfigError(f"model.backbone.{key}={backbone[key]}: Mask2Former needs one value per stage (4)")
    return options


def _check_keys(options: Mapping, schema, prefix: str) -> None:
    valid = [f.name for f in dataclasses.fields(schema)]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {prefix}.{close[0]}? " if close else ""
            raise ModelConfigError(f"{prefix}.{key} is not a model option; {hint}valid keys: {', '.join(valid)}")


def _checked(config_cls, **kwargs):
    """config_cls(**kwargs), refusing names it does not define (transformers keeps misspelt ones silently)."""
    known = {f.name.lstrip("_") for f in dataclasses.fields(config_cls)}
    known |= set(inspect.signature(config_cls.__init__).parameters)
    known |= {name for name in kwargs if isinstance(inspect.getattr_static(config_cls, name, None), property)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no field(s) {unknown} in this transformers version")
    return config_cls(**kwargs)


def _mask2former_config(options: dict, num_labels: int | None):
    from transformers import Mask2FormerConfig, ResNetConfig, SwinConfig

    b, hidden = options["backbone"], options["hidden_dim"]
    if b["type"] == "swin":
        backbone = _checked(SwinConfig, embed_dim=b["embed_dim"], depths=b["depths"], num_heads=b["num_heads"],
                            window_size=b["window_size"], image_size=b["image_size"], out_features=STAGES)
    else:  # bottleneck ResNet: embed_dim 64 with depths [3, 4, 6, 3] is ResNet-50 (stage widths 4x, 8x, 16x, 32x)
        backbone = _checked(ResNetConfig, embedding_size=b["embed_dim"], depths=b["depths"], layer_type="bottleneck",
                            hidden_sizes=[b["embed_dim"] * 4 * 2**i for i in range(len(STAGES))],
                            out_features=STAGES)
    # Feed-forward widths scale with hidden_dim: 256 gives transformers' (and the paper's) 1024 / 2048.
    config = _checked(Mask2FormerConfig, backbone_config=backbone, hidden_dim=hidden, feature_size=hidden,
                      mask_feature_size=hidden, num_queries=options["num_queries"],
                      decoder_layers=options["decoder_layers"], encoder_feedforward_dim=4 * hidden,
                      dim_feedforward=8 * hidden)
    config.num_labels = num_labels or DEFAULT_NUM_LABELS
    return config


def _load_pretrained(source: str, num_labels: int | None):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    path = os.path.expanduser(source)
    is_folder = os.path.isdir(path)
    if not is_folder and _looks_like_path(source, path):
        problem = "a file, not a folder" if os.path.exists(path) else "no such folder"
        raise PretrainedUnavailable(
            f"model.pretrained={source!r}: {problem}. Point model.pretrained at a folder written by "
            "save_pretrained (config.json + model.safetensors), a hub id such as "
            "facebook/mask2former-swin-large-coco-instance, or null to build from the config alone"
        )
    where, local_only = (path, True) if is_folder else (source, _offline())
    try:
        config = Mask2FormerConfig.from_pretrained(where, local_files_only=local_only)
        if num_labels is not None and num_labels != config.num_labels:
            log.info("model.pretrained=%s: new %d-class head replaces its %d-class head",
                     source, num_labels, config.num_labels)
            config.num_labels = num_labels
        return Mask2FormerForUniversalSegmentation.from_pretrained(
            where, config=config, local_files_only=local_only, ignore_mismatched_sizes=True)
    except OSError as exc:
        raise PretrainedUnavailable(_load_failure(source, is_folder, local_only, exc)) from exc


def _looks_like_path(source: str, path: str) -> bool:
    """A file system path rather than a hub id ("namespace/name", which also contains a slash)."""
    parent = os.path.dirname(path)
    return (os.path.exists(path) or source.startswith(("/", "./", "../", "~")) or not _HUB_ID.match(source)
            or bool(parent) and os.path.isdir(parent))  # "weights/m2f" under an existing ./weights


def _load_failure(source: str, is_folder: bool, offline: bool, exc: OSError) -> str:
    if is_folder:
        return (f"model.pretrained={source!r}: the folder cannot be loaded ({exc}). It must hold what "
                "save_pretrained writes: config.json and model.safetensors")
    if offline:
        return (f"model.pretrained={source!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
                f"Fetch it once on a machine with network (hf download {source}, with the same "
                "HF_HOME), or set model.pretrained to a local folder holding its config.json and model.safetensors")
    return (f"model.pretrained={source!r}: cannot be downloaded or found in the local cache ({exc}). Check the id "
            "and the network, or set model.pretrained to a local folder holding its config.json and model.safetensors")


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now: huggingface_hub reads it only once, at import."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f is not None and f.upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars, load reports or 'unsupported backbone' notices while building; errors still show."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
