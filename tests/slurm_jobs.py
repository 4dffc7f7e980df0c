"""Functions the SLURM tests submit with submitit directly (pickled by value: jobs need not import tests/)."""
from __future__ import annotations


def allreduce() -> dict:
    """Initialises torch.distributed from the job's environment and all-reduces (rank + 1)."""
    import socket

    import torch
    import torch.distributed as dist

    from partdistill.engine.distributed import environment, init_distributed

    source = environment().source  # before init_distributed exports RANK, WORLD_SIZE, ... for env://
    rank, world_size, local_rank = init_distributed()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    out = {"rank": rank, "world_size": world_size, "local_rank": local_rank, "sum": value.item(),
           "backend": dist.get_backend(), "source": source, "hostname": socket.gethostname()}
    dist.destroy_process_group()
    return out
