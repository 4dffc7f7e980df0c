"""The training stage (`proposal_learning`, tiny Mask2Former on CPU) as real SLURM jobs of `hydra/launcher=slurm`.

(a) A training job signalled mid-training (`scancel --signal=USR2`, what a preemption or the time
    limit sends) saves a checkpoint at the end of the step it is in, requeues itself, resumes from
    that iteration, and ends with the weights and losses of an uninterrupted local run.
(b) A job of 2 tasks on the node (`hydra.launcher.tasks_per_node=2`, CPU, gloo) initialises
    torch.distributed from submitit's environment, trains as 2 ranks of 1 sample each and writes
    its checkpoints once.

The grouping store they train on is made once, in this process (object_masks + pixel_grouping on
6 synthetic images), and copied into each run folder. Submission and waiting reuse
tests/test_slurm.py's helpers; jobs ask for one CPU per task.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_slurm as base
import torch
from safetensors.torch import load_file

from partdistill.paths import CHECKOUT

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(base.REASON is not None, reason=base.REASON or "")]

STAGE = "proposal_learning"
MAX_ITER = 20
# about 0.5 s per step on one core at 256 px: long enough to be signalled mid-training. Only the
# signal's save and the final one are checkpoints (checkpoint_period above max_iter); no evaluation
TRAIN = ["experiment=smoke", f"stage={STAGE}", f"stage.solver.max_iter={MAX_ITER}", "stage.checkpoint_period=1000",
         "stage.eval_suites=[]", "stage.augmentation.base_size=256"]
DDP_ITER = 6
DDP = ["experiment=smoke", f"stage={STAGE}", f"stage.solver.max_iter={DDP_ITER}", "stage.solver.ims_per_batch=2"]
TWO_TASKS = ["hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=2"]


def in_queue(jobs: list[str], states: str | None = None) -> list[str]:
    """Those of `jobs` that squeue lists (by default: pending, running or completing)."""
    where = ["-t", states] if states else []
    queued = set(subprocess.run(["squeue", "-h", *where, "-o", "%i"], capture_output=True, text=True,
                                check=False).stdout.split())
    return [job for job in jobs if job in queued]


@pytest.fixture(scope="module", autouse=True)
def cancel_leftovers():
    """Cancels whatever this module submitted that is still queued or running when it ends, then waits
    until SLURM has let go of them (a job stays COMPLETING a few seconds after its result came back,
    which later tests comparing squeue's output would see)."""
    before = len(base.SUBMITTED)
    yield
    mine = base.SUBMITTED[before:]
    left = in_queue(mine, "PD,R,S,CF,RQ,RS,RH,SE")
    if left:
        subprocess.run(["scancel", *left], check=False)
    deadline = time.monotonic() + 60
    while in_queue(mine) and time.monotonic() < deadline:
        time.sleep(0.5)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root, a run folder holding the pixel_grouping store of 6 synthetic images)."""
    from partdistill import config, stages
    from partdistill.data import synthetic

    root = tmp_path_factory.mktemp("train_root")
    synthetic.synthesize("synthetic", root / "datasets" / "synthetic", num_images=6, seed=0)
    run_dir = root / "grouped"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PART_DISTILLATION_ROOT", str(root))
        for stage in ("object_masks", "pixel_grouping"):
            cfg = config.compose(["experiment=smoke", f"stage={stage}", f"run_dir={run_dir}"])
            stages.run(cfg)
    return root, run_dir


def new_run(grouped, folder: Path) -> Path:
    """A run folder with a copy of the grouping store (what proposal_learning reads)."""
    shutil.copytree(grouped[1] / "store", folder / "store")
    return folder


def metric_rows(run: Path) -> list[dict]:
    path = run / STAGE / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def logged(run: Path) -> int:
    """Complete lines of metrics.jsonl so far (read while the job writes it)."""
    path = run / STAGE / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def losses(run: Path) -> list[dict]:
    """Every metrics line without its timings."""
    return [{k: v for k, v in row.items() if not k.endswith(("_time", "_per_s"))} for row in metric_rows(run)]


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name[6:13]) for p in (run / STAGE / "checkpoints").glob("state-*.pt"))


def task_logs(sweep: Path, job: str, task: int) -> str:
    folder = sweep / ".submitit" / job
    return "".join((folder / f"{job}_{task}_log.{ext}").read_text() for ext in ("out", "err"))


# -- (a) preemption of a training job ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_preempted_training_job_saves_requeues_resumes_and_ends_as_the_uninterrupted_run(grouped, tmp_path):
    root = grouped[0]
    reference = new_run(grouped, tmp_path / "reference")
    with open(tmp_path / "reference.txt", "w") as out:  # on the other core, meanwhile
        local = subprocess.Popen([sys.executable, str(base.LAUNCH), *TRAIN, f"run_dir={reference}",
                                  f"hydra.run.dir={reference}/log"], stdout=out, stderr=subprocess.STDOUT,
                                 env=base.env_for(root), cwd=CHECKOUT)
    try:
        run, sweep = new_run(grouped, tmp_path / "run"), tmp_path / "sweep"
        bg = base.Background(base.command(*TRAIN, "hydra.launcher.timeout_min=30", f"run_dir={run}",
                                          f"hydra.sweep.dir={sweep}"), root, tmp_path / "launch")
        job = bg.job_id()
        seen = base.wait_until(lambda: logged(run) >= 3 and logged(run), 240, "the job to log 3 training iterations")
        assert base.job_state(job).get("JobState") == "RUNNING" and seen < MAX_ITER, \
            "the job ended before it could be signalled: make TRAIN's steps slower"
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        code, out, err = bg.wait(timeout=300)
        assert local.wait(timeout=300) == 0, (tmp_path / "reference.txt").read_text()
    finally:
        if local.poll() is None:
            local.kill()
    assert code == 0, out + err
    log = base.job_logs(sweep, job)
    assert "Caught signal SIGUSR2" in log and "the stage saves at its next safe point" in log
    stopped = [int(n) for n in re.findall(r"stopped at iteration (\d+) after a save-now request", log)]
    assert len(stopped) == 1, log
    at = stopped[0]
    assert seen <= at < MAX_ITER  # the step running at the signal was finished, then saved
    assert f"partdistill: SLURM signalled job {job}: 1 of 1 save-now callback(s) saved; requeueing it" in log
    assert f"Requeued job {job}" in log
    assert int(base.job_state(job)["Restarts"]) == 1
    assert f"resumed from {run}/{STAGE}/checkpoints/state-{at:07d}.pt (iteration {at})" in log
    assert log.count("Starting with JobEnvironment") == 2  # two runs of the job
    result = json.loads((run / STAGE / "metrics.json").read_text())
    assert (result["start_iter"], result["iterations"]) == (at, MAX_ITER)
    assert checkpoints(run) == [at, MAX_ITER]  # the signal's save and the final one
    assert checkpoints(reference) == [MAX_ITER]
    name = f"model-{MAX_ITER:07d}.safetensors"
    ours, theirs = (load_file(str(r / STAGE / "checkpoints" / name)) for r in (run, reference))
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert [row["iteration"] for row in losses(run)] == list(range(1, MAX_ITER + 1))
    assert losses(run) == losses(reference)
    print(f"job {job}: signalled after {seen} logged iterations, saved at {at}, requeued once, resumed {at}->"
          f"{MAX_ITER}; final weights and losses equal to the local run")


# -- (b) a job of two tasks -------------------------------------------------------------------------------------


def test_b_two_task_training_job_uses_both_ranks_and_checkpoints_once(grouped, tmp_path):
    root = grouped[0]
    run, sweep = new_run(grouped, tmp_path / "run"), tmp_path / "sweep"
    args = [sys.executable, str(base.LAUNCH), "-m", "hydra/launcher=slurm", *TWO_TASKS, *DDP,
            "hydra.launcher.timeout_min=10", f"run_dir={run}", f"hydra.sweep.dir={sweep}"]
    bg = base.Background(args, root, tmp_path / "launch")
    job = bg.job_id()
    code, out, err = bg.wait(timeout=300)
    assert code == 0, out + err
    assert base.job_state(job).get("NumTasks") == "2"
    logs = [task_logs(sweep, job, task) for task in (0, 1)]
    for rank, log in enumerate(logs):
        assert re.search(fr"torch.distributed: rank {rank} of 2 \(local {rank}\), gloo backend, rendezvous "
                         r"\S+ \(from submitit\)", log), log
        assert "Traceback" not in log
    # the main process writes: its checkpoints, its summary line; rank 1 trains and says nothing of them
    saves = [re.findall(r"checkpoint at iteration (\d+) saved", log) for log in logs]
    assert saves == [["2", "4", str(DDP_ITER)], []]
    assert f"iterations 0->{DDP_ITER}" in logs[0] and f"iterations 0->{DDP_ITER}" not in logs[1]
    assert checkpoints(run) == [2, 4, DDP_ITER]
    state = torch.load(run / STAGE / "checkpoints" / f"state-{DDP_ITER:07d}.pt", weights_only=True)
    assert state["extra"]["sampler"]["world_size"] == 2  # the sampler sharded over 2 ranks
    assert state["extra"]["sampler"]["position"] == 2 * DDP_ITER  # 2 images per step, 1 per rank
    assert len(state["rng"]) == 2  # each rank's RNG states, gathered
    result = json.loads((run / STAGE / "metrics.json").read_text())
    assert (result["start_iter"], result["iterations"]) == (0, DDP_ITER)
    assert [row["iteration"] for row in metric_rows(run)] == list(range(1, DDP_ITER + 1))  # written once
    assert any(k.startswith("eval/synthetic/AR") for k in result)
    print(f"job {job}: 2 tasks, gloo world of 2, {DDP_ITER} iterations, checkpoints {checkpoints(run)} by rank 0")


# -- (c) preemption of a job of two tasks ---------------------------------------------------------------------


@pytest.mark.slow
def test_c_a_preempted_two_task_job_saves_once_requeues_and_both_ranks_resume(grouped, tmp_path):
    root = grouped[0]
    run, sweep = new_run(grouped, tmp_path / "run"), tmp_path / "sweep"
    args = [sys.executable, str(base.LAUNCH), "-m", "hydra/launcher=slurm", *TWO_TASKS, *TRAIN,
            "stage.solver.ims_per_batch=2", "hydra.launcher.timeout_min=30", f"run_dir={run}",
            f"hydra.sweep.dir={sweep}"]
    bg = base.Background(args, root, tmp_path / "launch")
    job = bg.job_id()
    seen = base.wait_until(lambda: logged(run) >= 3 and logged(run), 240, "the job to log 3 training iterations")
    assert seen < MAX_ITER, "the job ended before it could be signalled: make TRAIN's steps slower"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    code, out, err = bg.wait(timeout=300)
    assert code == 0, out + err
    assert int(base.job_state(job)["Restarts"]) == 1
    logs = [task_logs(sweep, job, task) for task in (0, 1)]
    stopped = [int(n) for n in re.findall(r"stopped at iteration (\d+) after a save-now request", logs[0])]
    assert len(stopped) == 1, logs[0]
    at = stopped[0]
    assert seen <= at < MAX_ITER
    for rank, log in enumerate(logs):  # the logs of the requeued run: both ranks resumed from the one save
        assert f"resumed from {run}/{STAGE}/checkpoints/state-{at:07d}.pt (iteration {at})" in log, (rank, log)
    assert checkpoints(run) == [at, MAX_ITER]
    result = json.loads((run / STAGE / "metrics.json").read_text())
    assert (result["start_iter"], result["iterations"]) == (at, MAX_ITER)
    assert [row["iteration"] for row in metric_rows(run)] == list(range(1, MAX_ITER + 1))
