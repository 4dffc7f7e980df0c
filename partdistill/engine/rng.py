"""Every random number generator a training step draws from, saved and restored as one state.

The states are tensors and plain values (`torch.load(..., weights_only=True)` cannot unpickle numpy
arrays or tuples of them), so that a checkpoint holds them and a resumed run draws exactly the
numbers the interrupted one would have drawn.
"""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


def rng_state() -> dict:
    """This process's python, numpy, torch and CUDA RNG states."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restores what `rng_state()` returned."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this process sees %d: not restored",
                        len(state["cuda"]), torch.cuda.device_count())


def seed_rank(rank: int) -> None:
    """Offsets this process's python, numpy and torch RNGs by its rank, so the ranks of one job (seeded
    alike to build identical models) draw different random numbers (loss point sampling, drop path)."""
    seed = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Restores every RNG state afterwards, for work outside the training stream (evaluation,
    building a DataLoader iterator, which draws its workers' base seed from torch's RNG): what a
    resumed run does differently from the interrupted one must not shift the draws of training."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
