"""launch.py as a user runs it: help, printed configs, the missing-dataset stop, dry runs, dispatch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from partdistill.data import synthetic
from partdistill.paths import CHECKOUT


def launch(*args: str, root=None, env_root: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PART_DISTILLATION_ROOT"}
    if env_root:
        env["PART_DISTILLATION_ROOT"] = str(root)
    extra = [f"hydra.run.dir={root}/hydra_run", f"hydra.sweep.dir={root}/hydra_sweep"] if root else []
    return subprocess.run(
        [sys.executable, str(CHECKOUT / "launch.py"), *args, *extra],
        capture_output=True, text=True, env=env, cwd=CHECKOUT, timeout=120,
    )


def test_help_lists_groups_and_options():
    out = launch("--help").stdout
    for line in (
        "data: demo, imagenet_1k, imagenet_22k, synthetic",
        "eval: cityscapes_part, demo, part_imagenet, pascal_parts, synthetic",
        "experiment: compute_friendly, demo, paper, smoke",
        "model: demo, m2f_swin_large, m2f_swin_tiny, tiny",
        "stage: distillation, evaluate, finetune, instance_training, object_masks, part_ranking, pipeline, pixel_grouping, "
        "proposal_learning, report",
        "hydra/launcher: local, slurm",
    ):
        assert line in out


@pytest.mark.parametrize("data", ["imagenet_1k", "imagenet_22k"])
def test_cfg_job_prints_the_composed_config(data):
    result = launch(f"data={data}", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert f"data:\n  name: {data}\n  train: {data}_train" in result.stdout


def test_cfg_job_shows_the_values_the_stage_runs_with():
    # the experiment's stages.pixel_grouping merged into stage, the command line on top
    out = launch("experiment=paper", "stage=pixel_grouping", "stage.kmeans.iters=7", "--cfg", "job").stdout
    assert "  num_partitions: 320\n" in out and "    iters: 7\n" in out and "\nstages:" not in out
    assert "experiment:\n  name: paper\n" in out


def test_defaults_tree_has_only_the_groups_a_user_chooses():
    out = launch("experiment=paper", "stage=pixel_grouping", "--info", "defaults-tree").stdout
    entries = {line.strip().rstrip(":").split(":")[0] for line in out.splitlines()
               if line.startswith("    ") and "hydra/" not in line and "hydra" != line.strip().rstrip(":")}
    assert entries <= {"config", "data", "eval", "model", "stage", "experiment", "_self_",
                       "schema_config", "schema_pixel_grouping"}, entries


def test_missing_datasets_stop_with_a_message_not_a_traceback(tmp_path):
    result = launch("data=imagenet_1k", root=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    err = result.stderr
    assert f"$PART_DISTILLATION_ROOT={tmp_path}" in err
    assert f"looked at {tmp_path}/datasets/imagenet_1k" in err
    assert "missing:" in err and 'section "ImageNet-1K"' in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_unset_root_names_the_default(tmp_path):
    result = launch("data=imagenet_1k", "hydra.run.dir=" + str(tmp_path / "run"), env_root=False)
    if result.returncode == 0:  # pragma: no cover - a checkout that holds ImageNet-1K
        pytest.skip("this checkout has datasets/imagenet_1k")
    assert "$PART_DISTILLATION_ROOT is unset, so the default root was used" in result.stderr
    assert f"looked at {CHECKOUT}/datasets/imagenet_1k" in result.stderr


def test_dry_run_prints_the_plan(root):
    result = launch("experiment=paper", "stage=pixel_grouping", "dry_run=true", root=root)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "stages    pixel_grouping" in out
    assert f"imagenet_22k     ok       {root}/datasets/imagenet_22k" in out
    assert "320 partition(s)" in out and "job array of 320 tasks" in out and "1 node(s) x 1 GPU(s)" in out
    assert "launcher  local" in out
    assert not (root / "runs").exists()


def test_dry_run_shows_slurm_resources(root):
    result = launch("experiment=paper", "stage=distillation", "hydra/launcher=slurm", "dry_run=true", root=root)
    assert result.returncode == 0, result.stderr
    assert "1 job of 8 node(s) x 8 GPU(s), 64 process(es); 120000 iterations, batch 256 (4 per process)" in result.stdout
    assert "nodes=8, gpus_per_node=8, tasks_per_node=8, cpus_per_task=10" in result.stdout
    assert "max_num_timeout=3" in result.stdout


def test_dry_run_with_a_missing_dataset_shows_it_and_fails(root):
    shutil.rmtree(root / "datasets/pascal_parts")
    result = launch("stage=evaluate", "eval=pascal_parts", "dry_run=true", root=root)
    assert result.returncode != 0
    assert "pascal_parts     missing" in result.stdout
    assert 'section "Pascal-Part"' in result.stderr and "Traceback" not in result.stderr


def test_multirun_over_the_three_suites(root):
    result = launch("-m", "stage=evaluate", "eval=pascal_parts,part_imagenet,cityscapes_part", "dry_run=true", root=root)
    assert result.returncode == 0, result.stderr
    for suite in ("pascal_parts", "part_imagenet", "cityscapes_part"):
        assert f"eval={suite}" in result.stdout


def test_bad_override_fails_with_hydras_message(root):
    result = launch("stage=pixel_grouping", "stage.kmeans.k=four", root=root)
    assert result.returncode != 0
    assert "Value 'four' of type 'str' could not be converted to Integer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_a_sweep_is_checked_as_a_whole_before_any_job(root, launcher):
    shutil.rmtree(root / "datasets/imagenet_22k")
    result = launch(
        "-m", f"hydra/launcher={launcher}", "data=imagenet_1k,imagenet_22k", "stage=pixel_grouping",
        "stage.partition=range(0,3)", root=root,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "imagenet_22k: looked at" in result.stderr and "imagenet_1k:" not in result.stderr
    sweep = root / "hydra_sweep"
    job_folders = [p for p in sweep.iterdir() if p.is_dir()] if sweep.exists() else []
    assert job_folders == []  # no job ran locally, nothing was handed to submitit


@pytest.mark.parametrize("experiment", ["paper", "compute_friendly"])
def test_the_full_size_pipeline_composes_and_dry_runs_with_its_real_resources(root, experiment):
    result = launch(f"experiment={experiment}", "stage=pipeline", "hydra/launcher=slurm", "dry_run=true", root=root)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    if experiment == "paper":
        expected = {
            "object_masks": "480 partition(s)", "pixel_grouping": "320 partition(s)", "part_ranking": "400 partition(s)",
            "proposal_learning": "1 job of 8 node(s) x 8 GPU(s), 64 process(es); 50000 iterations, batch 512",
            "distillation": "1 job of 8 node(s) x 8 GPU(s), 64 process(es); 120000 iterations, batch 256",
        }
    else:
        expected = {
            "object_masks": "8 partition(s)", "pixel_grouping": "8 partition(s)", "part_ranking": "8 partition(s)",
            "proposal_learning": "1 job of 1 node(s) x 8 GPU(s), 8 process(es); 90000 iterations, batch 64",
            "distillation": "1 job of 1 node(s) x 8 GPU(s), 8 process(es); 90000 iterations, batch 32",
        }
    for stage, text in expected.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(stage))
        assert text in line, line
    assert "mem_per_gpu=60G, timeout_min=4320" in out and not (root / "runs").exists()


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_a_sweep_sharing_a_training_folder_is_refused_before_any_job(root, launcher):
    shutil.rmtree(root / "datasets/synthetic")
    synthetic.synthesize("synthetic", root / "datasets/synthetic", num_images=4, seed=0)
    sweep = ("-m", f"hydra/launcher={launcher}", "experiment=smoke", "stage=instance_training",
             "stage.solver.base_lr=1e-4,2e-4", "stage.eval_period=2,4")
    result = launch(*sweep, root=root)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    err = result.stderr
    assert f"{root}/runs/smoke_synthetic/instance_training" in err
    assert "stage.solver.base_lr" in err and "stage.eval_period" not in err  # only what changes the result
    suggested = f"run_dir='{root}/runs/smoke_synthetic_base_lr${{stage.solver.base_lr}}'"
    assert suggested in err
    sweep_dir = root / "hydra_sweep"
    assert not sweep_dir.exists() or [p for p in sweep_dir.iterdir() if p.is_dir()] == []
    assert not (root / "runs").exists()  # no job ran, nothing was handed to submitit
    if launcher == "local":  # the suggestion works: one folder per job
        result = launch(*sweep, suggested.replace("'", ""), root=root)
        assert result.returncode == 0, result.stderr
        for lr in ("0.0001", "0.0002"):
            assert (root / f"runs/smoke_synthetic_base_lr{lr}/instance_training/checkpoints/identity.json").is_file()


def test_only_jobs_sharing_a_folder_under_different_configurations_are_refused(root, compose_cfg):
    from partdistill.plan import ConfigError
    from partdistill.sweeps import refuse_shared_training_folders

    def jobs(*sweep):
        return [compose_cfg("experiment=smoke", "stage=finetune", "eval=synthetic", override) for override in sweep]

    refuse_shared_training_folders(jobs("stage.fraction=0.1", "stage.fraction=1.0"))  # one folder per fraction
    refuse_shared_training_folders(jobs("stage.eval_period=1", "stage.eval_period=2"))  # the same training
    with pytest.raises(ConfigError, match=r"smoke_synthetic/finetune/synthetic_semseg_f1_s1234, with different "
                                          r"stage.loss.mask_weight"):
        refuse_shared_training_folders(jobs("stage.loss.mask_weight=1", "stage.loss.mask_weight=2"))


@pytest.mark.parametrize("extra", [["--cfg", "job"], ["-m", "stage.partition=all"]])
def test_a_bad_override_where_partdistill_composes_itself_is_a_message(root, extra):
    # --cfg job and the partition shorthands compose before Hydra does: the same message, no traceback
    result = launch("experiment=smoke", "stage=pixel_grouping", "stage.kmeans.kk=3", *extra, root=root)
    assert result.returncode == 2, result.stderr
    assert "Could not override 'stage.kmeans.kk'" in result.stderr and "Key 'kk' not in 'KMeansConfig'" in result.stderr
    assert "Traceback" not in result.stderr
