"""What the SLURM launcher does at submission: submitit's parameters from the preset, the job's setup
lines, the code snapshot, and asking SLURM whether a request can ever run (`sbatch --test-only`, and
cancelling a job whose pending reason never clears), plus making job states readable without
accounting.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from hydra_plugins.partdistill_launchers.config import OWN_KEYS
from partdistill.errors import UserError

log = logging.getLogger(__name__)

SNAPSHOT_ITEMS = ("partdistill", "conf", "datasets/README.md", "datasets/metadata")


class SubmissionError(UserError):
    """SLURM refused the sweep at submission (nothing was queued)."""


# -- parameters ---------------------------------------------------------------------------------


def executor_parameters(params: Dict[str, Any]) -> tuple[Dict[str, Any], Dict[str, Any]]:
    """(AutoExecutor keyword arguments, update_parameters keyword arguments) for the launcher's settings.

    The plugin's mapping (`max_num_timeout` and the folder go to the executor, the shared keys keep
    their names, the others get the `slurm_` prefix), with fixes for what sbatch refuses:
    `gpus_per_node: 0` asks for no GPUs rather than `--gpus-per-node=0`; `mem_per_gpu` applies only
    with GPUs (CPU jobs take `mem_gb`, or the cluster's default) and gives way to an explicit
    `mem_gb` or `mem_per_cpu` (sbatch takes only one of them).
    """
    params = dict(params)
    for key in OWN_KEYS:
        params.pop(key, None)
    init = {"folder": params.pop("submitit_folder"), "cluster": "slurm"}
    if "max_num_timeout" in params:
        init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
    if not params.get("gpus_per_node"):
        params["gpus_per_node"] = None
        params.pop("mem_per_gpu", None)
    if params.get("mem_gb") is not None or params.get("mem_per_cpu") is not None:
        params.pop("mem_per_gpu", None)  # sbatch takes one of --mem, --mem-per-cpu, --mem-per-gpu
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    update = {key if key in shared else f"slurm_{key}": value for key, value in params.items()
              if value is not None or key in shared}
    return init, update


def settings_for(cfg: Any, keys: Iterable[str]) -> Dict[str, Any]:
    """The launcher's settings `keys` (hydra.launcher.<key>) resolved against `cfg`, whose stage's resources
    and name they interpolate."""
    settings = {}
    for key in keys:
        value = OmegaConf.select(cfg, f"hydra.launcher.{key}")
        settings[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return settings


def job_setup_lines(snapshot: Optional[Path], root: Path) -> List[str]:
    """Shell lines the job runs before srun (after the user's `setup`)."""
    lines = [
        "# partdistill: one thread per allotted CPU unless set (SLURM does not set it; torch would use every core)",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        "# partdistill: the dataset root of the submission (the snapshot's own folder is no dataset root)",
        f"export PART_DISTILLATION_ROOT={shlex.quote(str(root))}",
    ]
    if snapshot is not None:
        lines += [
            "# partdistill: run the code snapshotted at submission",
            f"export PYTHONPATH={shlex.quote(str(snapshot))}${{PYTHONPATH:+:$PYTHONPATH}}",
        ]
    return lines


def make_executor(params: Dict[str, Any], snapshot: Optional[Path], root: Path) -> Any:
    """A submitit executor for the launcher's settings `params`, its jobs running the code in `snapshot` (None:
    the installed code) with the dataset root `root`."""
    import submitit

    init, update = executor_parameters(params)
    update["slurm_setup"] = list(update.get("slurm_setup") or []) + job_setup_lines(snapshot, root)
    if snapshot is not None and sys.version_info >= (3, 11):
        # -P: the submission directory does not go first on sys.path, so the snapshot's code is the
        # one imported even when sweeps are launched from the checkout itself
        init["slurm_python"] = f"{shlex.quote(sys.executable)} -P"
    executor = submitit.AutoExecutor(**init)
    executor.update_parameters(**update)
    return executor


def snapshot_folder(sweep_dir: Path) -> Path:
    """`<sweep_dir>/.snapshot/<date>-<time>-<pid>`: one per submission, so that a later submission into the
    same sweep folder never changes what the earlier, maybe still queued, jobs run."""
    return sweep_dir / ".snapshot" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def take_snapshot(target: Path) -> Path:
    """Copies the partdistill package, conf/ and the datasets' metadata to `target` (atomically)."""
    from partdistill.paths import CHECKOUT

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp-*")
    for item in SNAPSHOT_ITEMS:
        src = CHECKOUT / item
        if src.is_dir():
            shutil.copytree(src, tmp / item, ignore=ignore)
        elif src.is_file():
            (tmp / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / item)
    os.chmod(tmp, 0o755)
    os.rename(tmp, target)
    return target


def sbatch_test_only(executor: Any, num_jobs: int) -> None:
    """`sbatch --test-only` on the batch script submitit would submit: SLURM says now whether the request
    can ever run (partition, CPUs, memory, GPUs, time limit), whatever EnforcePartLimits says."""
    from submitit.slurm.slurm import _make_sbatch_string

    slurm = executor._executor  # the SlurmExecutor inside the AutoExecutor
    parameters = dict(slurm.parameters)
    if num_jobs > 1:
        parameters["map_count"] = num_jobs
    text = _make_sbatch_string(command="true", folder=slurm.folder, **parameters)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="partdistill-test-only-") as script:
        script.write(text)
        script.flush()
        try:
            out = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise SubmissionError("partdistill: sbatch was not found: hydra/launcher=slurm needs the SLURM "
                                  "client commands on PATH (or use hydra/launcher=local)") from None
        except subprocess.TimeoutExpired:
            raise SubmissionError("partdistill: `sbatch --test-only` got no answer in 60 s: is slurmctld up? "
                                  "(sinfo)") from None
    if out.returncode != 0:
        raise SubmissionError(_refusal(out.stderr.strip() or out.stdout.strip(), parameters))


def _refusal(sbatch_error: str, parameters: Dict[str, Any]) -> str:
    keys = ("partition", "nodes", "ntasks_per_node", "cpus_per_task", "gpus_per_node", "mem", "mem_per_gpu",
            "mem_per_cpu", "time")
    asked = ", ".join(f"{k}={parameters[k]}" for k in keys if parameters.get(k) is not None)
    lines = [
        "partdistill: SLURM refused this sweep at submission; nothing was queued.",
        "SLURM says:",
        *[f"  {line}" for line in sbatch_error.splitlines()],
        f"asked for: {asked or 'the cluster defaults'} (time in minutes)",
        "See the partitions and what their nodes have with: sinfo -o '%P %D %c %m %G %l'",
        "and change the request with hydra.launcher.partition=..., hydra.launcher.cpus_per_task=..., "
        "hydra.launcher.mem_gb=..., hydra.launcher.gpus_per_node=..., hydra.launcher.timeout_min=...",
    ]
    return "\n".join(lines)


# pending reasons that no amount of waiting resolves: the job asks for more than its partition, QOS or
# account allows (clusters without EnforcePartLimits accept such jobs and leave them pending forever)
HOPELESS_REASONS = (
    "PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit", "BadConstraints", "InvalidAccount", "InvalidQOS",
    "AccountNotAllowed", "QOSMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob",
    "QOSMaxMemoryPerJob", "QOSMaxNodePerJobLimit", "QOSMinGRES", "QOSMinCpuNotSatisfied",
)


def refuse_hopeless(job_id: str, parameters: Dict[str, Any], checks: int = 3, interval_s: float = 1.5) -> None:
    """Cancels the just-submitted job (array) and raises SubmissionError if SLURM says it can never start.

    Looks at the pending reasons a few times (the scheduler refines them in its first cycles); returns
    at once when no task is pending.
    """
    for attempt in range(checks):
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i|%t|%r"], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return
        rows = [line.split("|", 2) for line in out.stdout.splitlines() if line.count("|") == 2]
        pending = [(jid, reason) for jid, state, reason in rows if state == "PD"]
        hopeless = sorted({reason for _, reason in pending if reason in HOPELESS_REASONS})
        if hopeless:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
            raise SubmissionError(_refusal(
                f"the job was accepted but can never start (pending reason: {', '.join(hopeless)}); "
                f"partdistill cancelled job {job_id}", parameters).replace("nothing was queued", "nothing will run"))
        if not pending:
            return
        if attempt + 1 < checks:
            time.sleep(interval_s)


def accounting_works() -> bool:
    """Whether `sacct` answers; without it a job that dies without a result is never noticed by submitit."""
    try:
        out = subprocess.run(["sacct", "-o", "JobID,State", "--parsable2", "-j", "1"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def ensure_job_states() -> None:
    """Makes sure submitit can learn job states: without accounting (no slurmdbd) `sacct` fails, and a job
    that dies without a result would leave the sweep waiting forever. Then scripts/sacct_shim/sacct, which
    answers submitit's query from `scontrol`, goes first on this process's PATH."""
    if accounting_works():
        return
    from partdistill.paths import CHECKOUT

    shim = CHECKOUT / "scripts" / "sacct_shim"
    if (shim / "sacct").is_file() and os.access(shim / "sacct", os.X_OK):
        os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
        if accounting_works():
            log.info(f"sacct does not answer (no SLURM accounting): job states come from scontrol through {shim}/sacct")
            return
    log.warning("sacct does not answer (no SLURM accounting?): a job that dies without a result would leave this "
                f"sweep waiting. Put partdistill's stand-in first on PATH: export PATH={shim}:$PATH")


# -- the launcher ---------------------------------------------------------------------------------
