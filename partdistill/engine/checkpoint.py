"""Checkpoints that a killed or requeued job resumes from exactly.

A checkpoint at iteration N in `folder` is two files:
  model-000000N.safetensors  the model's state_dict (tensors that share memory stored once);
  state-000000N.pt           iteration, optimizer, scheduler, RNG states (python, numpy, torch,
                             CUDA; one set per rank), sampler position and any extra state, all
                             tensors and plain containers so `torch.load(..., weights_only=True)` reads it.
Each is written under a temporary name, flushed to disk and renamed; the state file goes last, so
its presence marks the checkpoint complete. Only the last `keep` complete checkpoints stay. The
model file's format, and finding a folder's newest checkpoint, belong to the models
(`models/weights.py`), which load `model.weights` without the engine.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from partdistill.engine.rng import rng_state, set_rng_state
from partdistill.models.weights import Checkpoint, _files, list_checkpoints, load_model_file, save_model_weights
from partdistill.errors import UserError
from partdistill.io import replace_atomically

log = logging.getLogger(__name__)

FORMAT = 1


# ---------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(folder: Path | str, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    scheduler=None, extra_state: dict | None = None, rng: list[dict] | None = None,
                    keep: int | None = None) -> Checkpoint:
    """Saves a checkpoint at `iteration` in `folder` and keeps only the newest `keep` (None or <= 0: all).

    Args:
        model (nn.Module): the unwrapped model (not DDP).
        extra_state (dict): more state (sampler position, hooks), weights_only-loadable values only.
        rng (list[dict]): `rng_state()` of each rank; None = this process's only.
    Returns:
        Checkpoint: the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    ckpt = Checkpoint.at(folder, iteration)
    save_model_weights(ckpt.model_path, model, {"iteration": str(iteration)})
    state = {"format": FORMAT, "iteration": iteration,
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "rng": rng if rng is not None else [rng_state()], "extra": extra_state or {}}
    replace_atomically(ckpt.state_path, lambda tmp: torch.save(state, tmp), durable=True)
    log.info("checkpoint at iteration %d saved to %s", iteration, folder)
    _prune(folder, keep)
    return ckpt


def _prune(folder: Path, keep: int | None) -> None:
    """Deletes all but the newest `keep` complete checkpoints, and model files whose save did not finish."""
    complete = list_checkpoints(folder)
    for ckpt in complete[keep:] if keep and keep > 0 else []:
        ckpt.state_path.unlink(missing_ok=True)  # first: the checkpoint stops counting as complete
        ckpt.model_path.unlink(missing_ok=True)
    states = {c.iteration for c in complete}
    for kind, iteration, path in _files(folder):
        if kind == "model" and iteration not in states:
            path.unlink(missing_ok=True)


def remove_checkpoints(folder: Path | str) -> int:
    """Deletes every checkpoint in `folder` and the files of unfinished saves; returns how many
    checkpoints were complete. State files go first, so no checkpoint looks complete without its model."""
    folder = Path(folder)
    files = sorted(_files(folder), key=lambda found: found[0] != "state")
    for _, _, path in files:
        path.unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    return sum(kind == "state" for kind, _, _ in files)


# ---------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, rank: int = 0, restore_rng: bool = True) -> dict:
    """Restores the model, optimizer, scheduler and this rank's RNG states from `ckpt`.

    Returns:
        dict: {"iteration": int, "extra": the extra state saved}.
    """
    state = torch.load(ckpt.state_path, map_location="cpu", weights_only=True)
    load_model_file(model, ckpt.model_path)
    if optimizer is not None and state["optimizer"] is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise UserError(f"{ckpt.state_path}: its optimizer does not fit this model's trainable parameters "
                            f"({exc}); did stage.freeze change? Use a new run folder or stage.resume=never") from exc
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        states = state["rng"]
        if len(states) <= rank:
            log.warning("checkpoint %s holds RNG states of %d rank(s); rank %d reuses rank %d's: the run will not "
                        "repeat the interrupted one exactly", ckpt.state_path, len(states), rank, rank % len(states))
        set_rng_state(states[rank % len(states)])
    log.info("resumed from %s (iteration %d)", ckpt.state_path, state["iteration"])
    return {"iteration": state["iteration"], "extra": state["extra"]}
