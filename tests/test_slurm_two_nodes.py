"""Jobs of two nodes on the local cluster's `twonode` partition (pdnode1 and pdnode2).

`scripts/local_slurm.sh start` makes the two nodes: each a slurmd in its own network namespace, with
its own address (10.77.0.11, 10.77.0.12) and hostname, on one machine. So a 2-node job here does
what it does on a real cluster: submitit names the first node as MASTER_ADDR, each rank resolves it
through its node's hosts file, and gloo binds the address its own hostname resolves to (no
GLOO_SOCKET_IFNAME needed).

(a) A submitit job of 2 nodes x 1 task all-reduces with gloo across the two nodes.
(b) The smoke proposal training as a `hydra/launcher=slurm` job of 2 nodes x 1 task (one rank per
    node), signalled mid-training (`scancel --signal=USR2`), requeued, resumed, ends with the
    weights and losses of the same job run uninterrupted (submitted alongside: each node has 2
    CPUs, each job takes 1 on each).

Reuses tests/test_slurm.py's submission helpers and tests/test_slurm_training.py's grouping store.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import test_slurm as base
import test_slurm_training as training
import torch
from safetensors.torch import load_file

PARTITION = "twonode"
NODES = ["pdnode1", "pdnode2"]
STATUS = Path("/run/local_slurm_twonode")  # what scripts/local_slurm.sh start found (up, or why not)


def _not_ready() -> str | None:
    """Why the two-node tests cannot run here, or None."""
    if base.REASON is not None:
        return base.REASON
    try:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-N", "-o", "%N %T"], capture_output=True, text=True,
                             timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "sinfo got no answer from slurmctld in 30 s: is it running? (bash scripts/local_slurm.sh status)"
    states = dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)
    if not states:
        why = STATUS.read_text().strip() if STATUS.is_file() else "scripts/local_slurm.sh start did not make it"
        if why == "up":  # made, then slurm.conf rewritten without it
            why = ("scripts/local_slurm.sh start made it, but slurmctld no longer knows it: rewritten by a copy "
                   "of local_slurm.sh without it? Run `sudo bash scripts/local_slurm.sh start` again")
        return f"no SLURM partition {PARTITION!r} (two nodes in network namespaces): {why}"
    down = {node: state for node, state in states.items() if state.rstrip("*~#$@") not in base.UP_STATES}
    if sorted(states) != NODES or down:
        return f"partition {PARTITION!r} is not up: node states {states} (bash scripts/local_slurm.sh status)"
    return None


REASON = _not_ready()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

# the fixtures this module shares: the grouping store, and the cancelling of leftover jobs
grouped = training.grouped
cancel_leftovers = training.cancel_leftovers

TWO_NODES = [f"hydra.launcher.partition={PARTITION}", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1",
             "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
STAGE, MAX_ITER = training.STAGE, training.MAX_ITER


# -- (a) an all-reduce across the two nodes -------------------------------------------------------------


def test_a_two_node_submitit_job_all_reduces_across_the_nodes_with_gloo(tmp_path, monkeypatch):
    import cloudpickle
    import slurm_jobs
    import submitit

    for key, value in base.env_for(tmp_path).items():
        monkeypatch.setenv(key, value)
    cloudpickle.register_pickle_by_value(slurm_jobs)  # the job need not import the tests folder
    try:
        executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
        executor.update_parameters(slurm_partition=PARTITION, nodes=2, tasks_per_node=1, cpus_per_task=1, mem_gb=1,
                                   timeout_min=5, slurm_job_name="pd_allreduce_2n")
        job = executor.submit(slurm_jobs.allreduce)
    finally:
        cloudpickle.unregister_pickle_by_value(slurm_jobs)
    base.SUBMITTED.append(job.job_id)
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [(r["rank"], r["hostname"]) for r in results] == [(0, "pdnode1"), (1, "pdnode2")], results
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 and r["backend"] == "gloo" and r["source"] == "submitit"
               and r["local_rank"] == 0 for r in results), results
    assert base.job_state(job.job_id).get("NodeList") == "pdnode[1-2]"


# -- (b) a preempted training job of two nodes -------------------------------------------------------------


def rank_line(rank: int) -> str:
    return (fr"torch.distributed: rank {rank} of 2 \(local 0\), gloo backend, rendezvous pdnode1:\d+ "
            r"\(from submitit\)")


@pytest.mark.slow
def test_b_two_node_training_job_preempted_requeues_and_ends_as_the_uninterrupted_job(grouped, tmp_path):
    root = grouped[0]
    train = [*training.TRAIN, "stage.solver.ims_per_batch=2", "hydra.launcher.timeout_min=30"]  # 1 image per rank

    def submit(name: str) -> tuple[Path, Path, base.Background]:
        run, sweep = training.new_run(grouped, tmp_path / name), tmp_path / f"{name}_sweep"
        args = [sys.executable, str(base.LAUNCH), "-m", "hydra/launcher=slurm", *TWO_NODES, *train,
                f"run_dir={run}", f"hydra.sweep.dir={sweep}"]
        return run, sweep, base.Background(args, root, tmp_path / f"{name}_launch")

    reference, ref_sweep, ref_bg = submit("reference")  # uninterrupted, on the nodes' other CPU meanwhile
    run, sweep, bg = submit("run")
    ref_job, job = ref_bg.job_id(), bg.job_id()
    seen = base.wait_until(lambda: training.logged(run) >= 3 and training.logged(run), 240,
                           "the job to log 3 training iterations")
    assert base.job_state(job).get("JobState") == "RUNNING" and seen < MAX_ITER, \
        "the job ended before it could be signalled: make TRAIN's steps slower"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    code, out, err = bg.wait(timeout=300)
    assert code == 0, out + err
    ref_code, ref_out, ref_err = ref_bg.wait(timeout=300)
    assert ref_code == 0, ref_out + ref_err

    # (a) one rank on each node, gloo across them
    for j, sweep_dir in ((job, sweep), (ref_job, ref_sweep)):
        state = base.job_state(j)
        assert (state.get("NumNodes"), state.get("NumTasks"), state.get("NodeList")) == ("2", "2", "pdnode[1-2]")
        for rank, node in enumerate(NODES):
            log = training.task_logs(sweep_dir, j, rank)
            assert f"hostname={node}, local_rank=0(1), node={rank}(2), global_rank={rank}(2)" in log, log
            assert re.search(rank_line(rank), log), log
            assert "Traceback" not in log
    # (b) signalled, saved once, requeued; both ranks resumed from that save
    assert int(base.job_state(job)["Restarts"]) == 1
    logs = [training.task_logs(sweep, job, rank) for rank in (0, 1)]
    assert "Caught signal SIGUSR2" in logs[0] and f"Requeued job {job}" in logs[0]
    stopped = [int(n) for n in re.findall(r"stopped at iteration (\d+) after a save-now request", logs[0])]
    assert len(stopped) == 1, logs[0]
    at = stopped[0]
    assert seen <= at < MAX_ITER
    for rank, log in enumerate(logs):
        assert log.count("Starting with JobEnvironment") == 2, (rank, log)  # two runs of the job on each node
        assert f"resumed from {run}/{STAGE}/checkpoints/state-{at:07d}.pt (iteration {at})" in log, (rank, log)
    assert training.checkpoints(run) == [at, MAX_ITER]
    assert training.checkpoints(reference) == [MAX_ITER]
    result = json.loads((run / STAGE / "metrics.json").read_text())
    assert (result["start_iter"], result["iterations"]) == (at, MAX_ITER)
    # (c) the weights and losses of the uninterrupted job
    name = f"model-{MAX_ITER:07d}.safetensors"
    ours, theirs = (load_file(str(r / STAGE / "checkpoints" / name)) for r in (run, reference))
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert [row["iteration"] for row in training.losses(run)] == list(range(1, MAX_ITER + 1))
    assert training.losses(run) == training.losses(reference)
    print(f"job {job} (pdnode1 + pdnode2): signalled after {seen} logged iterations, saved at {at}, requeued "
          f"once, resumed {at}->{MAX_ITER}; final weights and losses equal to job {ref_job}, uninterrupted")
