"""torch.distributed from the job's environment: torchrun, submitit (hydra/launcher=slurm), or plain srun.

    rank, world_size, local_rank = init_distributed()

Where the ranks come from, in order:
  1. torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT);
  2. a submitit job (`hydra.launcher.nodes=N hydra.launcher.tasks_per_node=G`: one process per
     task): `submitit.helpers.TorchDistributedEnvironment` (master = first node of the job, a port
     derived from the job id unless MASTER_PORT is set);
  3. a plain `srun` task: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the job's first node, a port
     derived from SLURM_JOB_ID;
  4. otherwise a single process: nothing is initialised and (0, 1, 0) is returned.
The backend is NCCL when CUDA is available and gloo otherwise; with CUDA each process uses the
GPU of its local rank.
"""
from __future__ import annotations

import datetime
import logging
import os
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

PORT_RANGE = (20000, 60000)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # torchrun | submitit | slurm | single


def _torchrun() -> DistEnv | None:
    keys = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    if not all(os.environ.get(k) for k in keys):
        return None
    return DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                   os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), "torchrun")


def _submitit() -> DistEnv | None:
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "SLURM_JOB_ID" not in os.environ:
        return None
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    return DistEnv(env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, "submitit")


def _first_node(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return nodelist.split(",")[0].split("[")[0]  # "node[01-04]" without scontrol: best effort


def _port_from(job_id: str) -> int:
    if os.environ.get("MASTER_PORT"):
        return int(os.environ["MASTER_PORT"])
    low, high = PORT_RANGE
    return low + int("".join(ch for ch in job_id if ch.isdigit()) or 0) % (high - low)


def _slurm() -> DistEnv | None:
    if "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return None
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or "localhost"
    return DistEnv(int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]),
                   int(os.environ.get("SLURM_LOCALID", 0)), _first_node(nodelist),
                   _port_from(os.environ.get("SLURM_JOB_ID", "0")), "slurm")


def environment() -> DistEnv:
    """The ranks and rendezvous this process would use (see the module docstring for the order)."""
    for probe in (_torchrun, _submitit, _slurm):
        found = probe()
        if found is not None:
            return found
    return DistEnv(0, 1, 0, "127.0.0.1", 0, "single")


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> tuple[int, int, int]:
    """Initialises the default process group from the environment; returns (rank, world_size, local_rank).

    A single process (no launcher variables, or a world of one) initialises nothing. Calling it
    again once the group exists returns the same triple.
    """
    import torch
    import torch.distributed as dist

    env = environment()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), env.local_rank
    if env.world_size <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    backend = backend or default_backend()
    os.environ["MASTER_ADDR"] = env.master_addr
    os.environ["MASTER_PORT"] = str(env.master_port)
    os.environ["RANK"] = str(env.rank)
    os.environ["WORLD_SIZE"] = str(env.world_size)
    os.environ["LOCAL_RANK"] = str(env.local_rank)
    if backend == "nccl" and torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    log.info("torch.distributed: rank %d of %d (local %d), %s backend, rendezvous %s:%d (from %s)",
             env.rank, env.world_size, env.local_rank, backend, env.master_addr, env.master_port, env.source)
    return env.rank, env.world_size, env.local_rank


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

