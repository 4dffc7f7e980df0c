"""The SLURM launcher's pieces that need no scheduler: parameter mapping, the batch script it asks for,
the partition shorthands, the preemption registry, checkpoint(), and the distributed environment.
(tests/test_slurm.py runs the behaviours on a real SLURM.)"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from hydra_plugins.partdistill_launchers import launchers, reporting, submission
from partdistill import config, sweeps
from partdistill.paths import CHECKOUT
from partdistill.engine import distributed, preemption
from partdistill.errors import ConfigError
from partdistill.store import Store


def launcher_settings(compose_cfg, *overrides: str) -> dict:
    cfg = compose_cfg("hydra/launcher=slurm", *overrides, hydra=True)
    cfg.hydra.sweep.dir = "/tmp/sweep"  # ${now:} has no value outside a run
    params = config.launcher_params(cfg, cfg.hydra)
    params.pop("_target_")
    return params


def batch_script(tmp_path, init: dict, update: dict) -> str:
    """The sbatch script submitit would write for these executor arguments (nothing is submitted)."""
    import submitit
    from submitit.slurm.slurm import _make_sbatch_string

    executor = submitit.AutoExecutor(**{**init, "folder": tmp_path / "%j"})
    executor.update_parameters(**update)
    return _make_sbatch_string(command="true", folder=tmp_path / "%j", **executor._executor.parameters)


def test_paper_gpu_job_maps_to_the_papers_resources(compose_cfg, tmp_path):
    params = launcher_settings(compose_cfg, "experiment=paper", "stage=distillation")
    init, update = submission.executor_parameters(params)
    assert init["slurm_max_num_timeout"] == 3 and init["cluster"] == "slurm"
    assert "snapshot" not in update and "slurm_snapshot" not in update
    script = batch_script(tmp_path, init, update)
    for flag in ("--nodes=8", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=10", "--mem-per-gpu=60G",
                 "--time=4320", "--signal=USR2@120", "--job-name=pd_distillation"):
        assert f"#SBATCH {flag}\n" in script
    assert "--mem=" not in script


def test_cpu_job_asks_for_no_gpu_and_no_memory_per_gpu(compose_cfg, tmp_path):
    params = launcher_settings(compose_cfg, "experiment=smoke", "stage=object_masks", "hydra.launcher.cpus_per_task=1",
                               "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=5")
    init, update = submission.executor_parameters(params)
    script = batch_script(tmp_path, init, update)
    assert "--gpus-per-node" not in script and "--mem-per-gpu" not in script
    for flag in ("--partition=debug", "--cpus-per-task=1", "--time=5", "--ntasks-per-node=1"):
        assert f"#SBATCH {flag}\n" in script


def test_mem_gb_replaces_mem_per_gpu(compose_cfg, tmp_path):
    params = launcher_settings(compose_cfg, "experiment=paper", "stage=distillation", "hydra.launcher.mem_gb=400")
    script = batch_script(tmp_path, *submission.executor_parameters(params))
    assert "#SBATCH --mem=400GB\n" in script and "--mem-per-gpu" not in script


def test_autoexecutor_receives_the_mapped_parameters(compose_cfg, monkeypatch):
    calls = {}

    class FakeExecutor:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def update_parameters(self, **kwargs):
            calls["update"] = kwargs

    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    params = launcher_settings(compose_cfg, "experiment=smoke", "stage=object_masks",
                               "hydra.launcher.max_num_timeout=7", "hydra.launcher.array_parallelism=4")
    init, update = submission.executor_parameters(params)
    submitit.AutoExecutor(**init).update_parameters(**update)
    assert calls["init"] == {"folder": "/tmp/sweep/.submitit/%j", "cluster": "slurm", "slurm_max_num_timeout": 7}
    assert calls["update"]["slurm_array_parallelism"] == 4 and calls["update"]["slurm_signal_delay_s"] == 120
    assert calls["update"]["timeout_min"] == 4320 and calls["update"]["gpus_per_node"] is None


def test_job_setup_lines_pin_threads_root_and_snapshot(tmp_path):
    lines = submission.job_setup_lines(tmp_path / "snap", tmp_path / "root")
    text = "\n".join(lines)
    assert 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"' in text
    assert f"export PART_DISTILLATION_ROOT={tmp_path}/root" in text
    assert f"export PYTHONPATH={tmp_path}/snap${{PYTHONPATH:+:$PYTHONPATH}}" in text
    assert "PYTHONPATH" not in "\n".join(submission.job_setup_lines(None, tmp_path))


def test_snapshot_copies_code_config_and_metadata(tmp_path):
    target = submission.take_snapshot(submission.snapshot_folder(tmp_path))
    assert target.parent == tmp_path / ".snapshot"
    assert (target / "partdistill" / "engine" / "preemption.py").is_file()
    assert (target / "conf" / "config.yaml").read_text() == (CHECKOUT / "conf" / "config.yaml").read_text()
    assert not list(target.rglob("__pycache__"))
    assert [p.name for p in tmp_path.joinpath(".snapshot").iterdir()] == [target.name]  # no temporary left


def test_resubmit_command_swaps_the_partitions_for_incomplete():
    argv = ["launch.py", "-m", "hydra/launcher=slurm", "stage=pixel_grouping", "stage.partition=range(0,40)",
            "hydra.sweep.dir=/x", "hydra.launcher.partition=gpu"]
    assert reporting.resubmit_command(argv) == (
        "python launch.py -m hydra/launcher=slurm stage=pixel_grouping hydra.launcher.partition=gpu "
        "stage.partition=incomplete")


def test_a_job_that_can_never_start_is_cancelled_with_the_reason(monkeypatch):
    calls, reasons = [], iter(["88_0|PD|None\n88_1|PD|None", "88_0|PD|PartitionTimeLimit\n88_1|PD|PartitionTimeLimit"])

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        out = next(reasons) if cmd[0] == "squeue" else ""
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(submission.subprocess, "run", fake_run)
    with pytest.raises(submission.SubmissionError) as refused:
        submission.refuse_hopeless("88", {"time": 120, "partition": "short"}, interval_s=0)
    assert "can never start (pending reason: PartitionTimeLimit); partdistill cancelled job 88" in str(refused.value)
    assert "asked for: partition=short, time=120" in str(refused.value)
    assert calls[-1] == ["scancel", "88"]


def test_a_job_waiting_for_resources_or_priority_is_left_alone(monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="90|PD|Priority\n91|R|None", stderr="")

    monkeypatch.setattr(submission.subprocess, "run", fake_run)
    submission.refuse_hopeless("90", {}, checks=2, interval_s=0)
    assert [c[0] for c in calls] == ["squeue", "squeue"]


# -- checkpoint and the preemption registry --------------------------------------------------------------


@pytest.fixture
def registry():
    preemption.reset()
    yield preemption
    preemption.reset()


def test_request_save_runs_every_callback_even_after_a_failure(registry, caplog):
    calls = []
    registry.on_preemption(lambda: calls.append("a"))

    @registry.on_preemption
    def broken():
        raise OSError("disk full")

    with registry.registered(lambda: calls.append("c")):
        assert registry.request_save() == 2
    assert calls == ["a", "c"] and registry.save_requested()
    assert "disk full" in caplog.text
    assert len(registry.callbacks()) == 2  # the context manager's callback is gone
    registry.remove(broken)
    registry.remove(broken)  # twice is fine
    assert len(registry.callbacks()) == 1


def test_checkpoint_asks_the_stage_to_save_then_resubmits_the_same_call(registry, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    saved = []
    registry.on_preemption(lambda: saved.append(True))
    launcher = launchers.SubmititSlurmLauncher(submitit_folder="/tmp/x/%j", snapshot=True)
    args = (["stage=pixel_grouping", "stage.partition=3"], "hydra.sweep.dir", 3, "job_id_for_3", {}, None)
    delayed = launcher.checkpoint(*args)
    assert saved == [True]
    assert delayed.function is launcher and delayed.args == args
    err = capsys.readouterr().err
    assert "SLURM signalled job 77: 1 of 1 save-now callback(s) saved; requeueing it with the same overrides " \
           "(stage=pixel_grouping stage.partition=3)" in err


# -- partition shorthands ---------------------------------------------------------------------------------


def expand(*args: str) -> list[str]:
    return sweeps.expand(["launch.py", *args])


def test_all_expands_to_every_partition(root, capsys):
    out = expand("-m", "experiment=smoke", "stage=object_masks", "stage.num_partitions=5", "stage.partition=all")
    assert out == ["launch.py", "-m", "experiment=smoke", "stage=object_masks", "stage.num_partitions=5",
                   "stage.partition=range(0,5)"]
    err = capsys.readouterr().err
    assert "stage.partition=all -> stage.partition=range(0,5) (all 5 partitions of object_masks)" in err


def test_incomplete_expands_to_the_missing_shards(root, tmp_path):
    run = tmp_path / "run"
    store = Store(run / "store", "object_masks", 4, {"any": 1})
    for i in (0, 2):
        with store.write_shard(i):
            pass
    args = ("-m", "experiment=smoke", "stage=object_masks", "stage.num_partitions=4", f"run_dir={run}",
            "hydra.launcher.partition=x", "stage.partition=incomplete")
    assert expand(*args)[-1] == "stage.partition=1,3"
    with store.write_shard(1):
        pass
    assert expand(*args)[-1] == "stage.partition=3"
    with store.write_shard(3):
        pass
    with pytest.raises(sweeps.NothingToRun, match="all 4 partitions of object_masks are complete"):
        expand(*args)


def test_incomplete_without_a_store_is_every_partition_and_without_m_is_null(root, tmp_path):
    args = ("experiment=smoke", "stage=object_masks", "stage.num_partitions=3", f"run_dir={tmp_path}/none",
            "stage.partition=incomplete")
    assert expand("-m", *args)[-1] == "stage.partition=range(0,3)"
    assert expand(*args)[-1] == "stage.partition=null"


def test_shorthands_refuse_what_they_cannot_expand(root, tmp_path):
    with pytest.raises(ConfigError, match="needs a partitioned stage"):
        expand("-m", "stage=evaluate", "stage.partition=all")
    with pytest.raises(ConfigError, match="cannot be combined with another sweep"):
        expand("-m", "experiment=smoke", "stage=object_masks", "seed=1,2", "stage.partition=all")
    Store(tmp_path / "run" / "store", "object_masks", 4, {"any": 1})
    with pytest.raises(ConfigError, match="holds 4 partitions but stage.num_partitions=2"):
        expand("-m", "experiment=smoke", "stage=object_masks", f"run_dir={tmp_path}/run", "stage.partition=incomplete")
    assert expand("-m", "stage=object_masks") == ["launch.py", "-m", "stage=object_masks"]  # untouched


def test_sweep_values():
    assert sweeps.sweep_value([0, 1, 2]) == "range(0,3)"
    assert sweeps.sweep_value([2, 3]) == "range(2,4)"
    assert sweeps.sweep_value([1, 4]) == "1,4"
    assert sweeps.sweep_value([7]) == "7"


def test_launch_expands_all_into_a_sweep(root):
    env = {**os.environ, "PART_DISTILLATION_ROOT": str(root)}
    result = subprocess.run(
        [sys.executable, str(CHECKOUT / "launch.py"), "-m", "experiment=smoke", "stage=object_masks",
         "stage.num_partitions=3", "stage.partition=all", "dry_run=true", f"hydra.sweep.dir={root}/sweep"],
        capture_output=True, text=True, env=env, cwd=CHECKOUT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("partition") >= 3
    for i in range(3):
        assert f"partition {i} of 3" in result.stdout


def test_slurm_dry_run_sweep_submits_nothing(root):
    env = {**os.environ, "PART_DISTILLATION_ROOT": str(root), "PATH": "/nonexistent"}  # no sbatch reachable
    result = subprocess.run(
        [sys.executable, str(CHECKOUT / "launch.py"), "-m", "hydra/launcher=slurm", "experiment=smoke",
         "stage=object_masks", "stage.partition=0,1", "dry_run=true", f"hydra.sweep.dir={root}/sweep"],
        capture_output=True, text=True, env=env, cwd=CHECKOUT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("partdistill dry run: nothing is run or submitted.") == 2
    assert "launcher  slurm" in result.stdout
    assert not (root / "sweep" / ".submitit").exists()


# -- distributed ----------------------------------------------------------------------------------------


def clear_dist_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)


def test_a_single_process_initialises_nothing(monkeypatch):
    import torch.distributed as dist

    clear_dist_env(monkeypatch)
    assert distributed.environment().source == "single"
    assert distributed.init_distributed() == (0, 1, 0)
    assert not dist.is_initialized() and distributed.is_main_process()


def test_environment_from_torchrun_and_from_srun(monkeypatch):
    clear_dist_env(monkeypatch)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "node1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert distributed.environment() == distributed.DistEnv(3, 8, 1, "node1", 29500, "torchrun")
    clear_dist_env(monkeypatch)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "localhost")
    env = distributed.environment()
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 16, 1, "slurm")
    assert env.master_addr == "localhost" and env.master_port == 20000 + 1234
    assert distributed.default_backend() == ("nccl" if __import__("torch").cuda.is_available() else "gloo")


def test_a_world_of_one_from_torchrun_variables_is_a_no_op(monkeypatch):
    import torch.distributed as dist

    clear_dist_env(monkeypatch)
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
        monkeypatch.setenv(key, value)
    assert distributed.init_distributed() == (0, 1, 0)
    assert not dist.is_initialized()


def test_schema_of_the_slurm_preset(compose_cfg):
    cfg = compose_cfg("hydra/launcher=slurm", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.partdistill_launchers.launchers.SubmititSlurmLauncher"
    assert launcher.max_num_timeout == 3 and launcher.snapshot is True
    assert OmegaConf.is_missing(launcher, "partition") is False and launcher.partition is None
