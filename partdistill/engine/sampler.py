"""An infinite, seeded, rank-sharded sampler whose position is part of the checkpoint.

The global stream is epoch after epoch, each a permutation of the dataset drawn from
(seed, epoch). Global position p is the p-th sample of that stream; rank r of W takes the
positions p = start + r, start + r + W, ..., so after s steps of a global batch B (a multiple of W)
every rank has consumed exactly the positions below s x B, whatever the per-rank order. The
trainer advances `position` as batches are consumed (a DataLoader draws indices ahead of that),
and a sampler restarted at a position yields the same sequence as the one that went past it.

With `sample_seeds=True` each item is `(index, seed)`, the seed a function of (seed, position):
a dataset that draws its augmentation from `torch.Generator().manual_seed(seed)` gives the same
sample before and after a resume, whichever DataLoader worker maps it.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

from partdistill.errors import UserError


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(torch.utils.data.Sampler):
    """Infinite shuffled indices for one rank, restartable at any global position.

    Args:
        dataset_len (int): number of samples in the dataset.
        seed (int): the permutations (and sample seeds) are functions of it.
        rank, world_size (int | None): this process's shard; None = from torch.distributed (or 0, 1).
        sample_seeds (bool): yield (index, sample_seed) pairs instead of indices.
    """

    def __init__(self, dataset_len: int, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 sample_seeds: bool = False):
        if dataset_len <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        default_rank, default_world = _world()
        self.dataset_len, self.seed, self.sample_seeds = dataset_len, seed, sample_seeds
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")
        self.position = 0  # global samples consumed, over all ranks

    def permutation(self, epoch: int) -> np.ndarray:
        """The dataset order of `epoch` (the same on every rank and in every run with this seed)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        return rng.permutation(self.dataset_len)

    def sample_seed(self, position: int) -> int:
        """The seed of the sample at global `position` (for its augmentation)."""
        # 1 << 32 keeps these seeds apart from the permutations' (seed, epoch) streams
        return int(np.random.SeedSequence([self.seed, 1 << 32, position]).generate_state(1)[0])

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        position = self.position + self.rank
        epoch, order = -1, None
        while True:
            if position // self.dataset_len != epoch:
                epoch = position // self.dataset_len
                order = self.permutation(epoch)
            index = int(order[position % self.dataset_len])
            yield (index, self.sample_seed(position)) if self.sample_seeds else index
            position += self.world_size

    def advance(self, samples: int) -> None:
        """Counts `samples` more as consumed (the global batch of one step)."""
        self.position += samples

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "dataset_len": self.dataset_len,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Restores the position; a different seed or dataset size would silently change the stream."""
        for key in ("seed", "dataset_len"):
            if state[key] != getattr(self, key):
                raise UserError(f"the checkpoint's sampler has {key}={state[key]}, this run {getattr(self, key)}: "
                                "resuming would not continue the same sample stream (use a new run folder, "
                                "or stage.resume=never)")
        self.position = int(state["position"])
