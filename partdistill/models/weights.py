"""Model weight files: writing and reading partdistill's safetensors, and finding a run's newest ones.

A trained model is a `model-000000N.safetensors` file (tensors that share memory stored once, metadata
in key order, the umask's permissions) beside the training state `state-000000N.pt` the engine writes
(`engine/checkpoint.py`); the state file's presence marks the pair complete. `model.weights` and
`stage.init_from` name a file, a checkpoints folder or a stage's run folder (its newest checkpoint).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from partdistill.errors import UserError
from partdistill.io import output_mode, replace_atomically

log = logging.getLogger(__name__)

LOSS_PREFIX = "criterion."  # the loss's buffers in a Mask2Former state_dict
_NAME = re.compile(r"^(model|state)-(\d+)\.(safetensors|pt)$")


@dataclass(frozen=True)
class Checkpoint:
    iteration: int
    model_path: Path
    state_path: Path

    @classmethod
    def at(cls, folder: Path | str, iteration: int) -> Checkpoint:
        folder = Path(folder)
        return cls(iteration, folder / f"model-{iteration:07d}.safetensors", folder / f"state-{iteration:07d}.pt")


def _unique_tensors(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors for save_file, which refuses shared memory: a tensor identical to an earlier one
    (tied weights) becomes an alias of its name; another view of a seen storage is copied."""
    tensors, aliases, views, storages = {}, {}, {}, set()
    for name, t in state_dict.items():
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.device, t.dtype, t.storage_offset(), tuple(t.shape), t.stride())
        if ptr and view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        shared = ptr in storages
        storages.add(ptr)
        t = t.cpu()
        tensors[name] = t.clone() if shared or not t.is_contiguous() else t
    return tensors, aliases


def save_model_weights(path: Path | str, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Writes `model.state_dict()` to a safetensors file atomically; the same weights (and metadata)
    always give the same bytes, and the file gets the umask's permissions like every other output."""
    tensors, aliases = _unique_tensors(model.state_dict())
    meta = {"format": "pt", "aliases": json.dumps(aliases, sort_keys=True), **(metadata or {})}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)
        _sort_metadata(tmp)
        os.chmod(tmp, output_mode())  # safetensors creates its files 0600, hiding them from a team

    replace_atomically(Path(path), write, durable=True)


def _sort_metadata(path: Path) -> None:
    """Rewrites the header of a safetensors file in place with its metadata in key order.

    safetensors keeps the metadata in a hash map whose order changes from one save to the next, so
    identical weights would not give identical files. Only the order changes: the header keeps its
    length (padding with spaces, as safetensors pads it) and the tensor data does not move.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if not header.get("__metadata__"):
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # escaped differently from safetensors' own JSON: keep the file as written
            log.warning("%s: could not put its metadata in key order", path)
            return
        f.seek(8)
        f.write(text.ljust(size))


def _files(folder: Path) -> list[tuple[str, int, Path]]:
    found = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else []:
        m = _NAME.match(path.name)
        if m and (m[1], m[3]) in {("model", "safetensors"), ("state", "pt")}:
            found.append((m[1], int(m[2]), path))
    return found


def list_checkpoints(folder: Path | str) -> list[Checkpoint]:
    """Checkpoints whose state file exists (complete by name), newest first; nothing is read."""
    return sorted((Checkpoint.at(folder, it) for kind, it, _ in _files(Path(folder)) if kind == "state"),
                  key=lambda c: c.iteration, reverse=True)


def _problem(ckpt: Checkpoint) -> str | None:
    """Why `ckpt` cannot be resumed from, or None. Reads both files' headers and the state's pickle
    and zip directory (memory-mapped), which is where a truncated or partial file fails."""
    try:
        with safe_open(str(ckpt.model_path), "pt") as f:
            f.metadata()
        state = torch.load(ckpt.state_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any read failure makes it unusable; the message says which
        return f"{type(exc).__name__}: {exc}"
    if not isinstance(state, dict) or state.get("iteration") != ckpt.iteration:
        return f"its state file does not hold iteration {ckpt.iteration}"
    return None


def latest_checkpoint(folder: Path | str) -> Checkpoint | None:
    """The newest complete, readable checkpoint in `folder`, or None.

    A newer model file without its state file (a save that did not finish) and a newer checkpoint
    that cannot be read are reported with a warning and skipped.
    """
    checkpoints = list_checkpoints(folder)
    newest = checkpoints[0].iteration if checkpoints else -1
    for kind, iteration, path in _files(Path(folder)):
        if kind == "model" and iteration > newest:
            log.warning("checkpoint %s has no state file (its save did not finish): ignored", path)
    for ckpt in checkpoints:
        problem = _problem(ckpt)
        if problem is None:
            return ckpt
        log.warning("checkpoint %s is corrupt or partial (%s): falling back to the previous one",
                    ckpt.state_path, problem)
    return None


def load_model_file(model: nn.Module, path: Path | str, strict: bool = True) -> None:
    """Loads a safetensors file written by `save_model_weights` into `model`."""
    with safe_open(str(path), "pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    tensors = load_file(str(path), device="cpu")
    tensors.update({alias: tensors[name] for alias, name in aliases.items()})
    # the loss's buffers (transformers registers the criterion as a submodule) are not weights: their
    # size follows how a stage configures its loss, which a model loaded for inference does not repeat
    tensors = {k: v for k, v in tensors.items() if not k.startswith(LOSS_PREFIX)}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    wrong = unexpected + [k for k in missing if not k.startswith(LOSS_PREFIX)]
    if strict and wrong:
        raise RuntimeError(f"{path} does not fit the model: missing {[k for k in missing if k in wrong][:5]}, "
                           f"unexpected {unexpected[:5]}")


def resolve_model_file(source: Path | str, option: str = "model.weights") -> Path:
    """The model file of a safetensors file, a checkpoints folder or a run folder (its newest checkpoint)."""
    source = Path(source)
    if source.is_dir():
        folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
        ckpt = latest_checkpoint(folder)
        if ckpt is None:
            raise UserError(f"{option}={source}: no complete checkpoint in {folder}; train the stage that writes "
                            f"it first (e.g. stage=proposal_learning), or change {option}")
        return ckpt.model_path
    if not source.is_file():
        raise UserError(f"{option}={source}: no such file or folder (a stage's folder appears when that stage "
                        f"trains, e.g. stage=proposal_learning)")
    return source


def load_model_weights(model: nn.Module, source: Path | str, strict: bool = True) -> Path:
    """Loads weights from a safetensors file, a checkpoints folder or a run folder (its newest
    checkpoint); the `model.weights` option. Returns the file loaded."""
    source = resolve_model_file(source)
    load_model_file(model, source, strict=strict)
    log.info("model weights loaded from %s", source)
    return source


def load_all_but_head(model: nn.Module, source: Path | str, option: str = "stage.init_from") -> Path:
    """Loads a trained model's weights except its class head (and loss buffers), whose size differs
    between stages: how one stage starts from another's model. Returns the file loaded."""
    path = resolve_model_file(source, option)
    skip = ("class_predictor.", LOSS_PREFIX)
    tensors = {k: v for k, v in load_file(str(path), device="cpu").items() if not k.startswith(skip)}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    wrong = unexpected + [k for k in missing if not k.startswith(skip)]
    if wrong:
        raise UserError(f"{option}={source}: {path} does not fit this model (check model=): "
                        f"{', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")
    log.info("%s: weights loaded from %s (all but the class head)", option, path)
    return path
