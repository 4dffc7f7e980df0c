"""The pipeline's chain of SLURM jobs as planned before anything is submitted (partdistill/chain.py and the
launcher's per-step settings): which steps, how many tasks, each step's own resources, and what a
resubmission leaves out. (tests/test_slurm_pipeline.py submits a chain to the real local SLURM.)"""
from __future__ import annotations

from omegaconf import open_dict

from hydra_plugins.partdistill_launchers import pipeline, submission
from partdistill import chain
from test_slurm_launcher import batch_script
from test_stage_grouping import run

PAPER_SUITES = ["evaluate-pascal_parts", "evaluate-part_imagenet", "evaluate-cityscapes_part"]


def pipeline_cfg(compose_cfg, tmp_path, *overrides):
    cfg = compose_cfg("hydra/launcher=slurm", "stage=pipeline", f"run_dir={tmp_path / 'run'}", *overrides, hydra=True)
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")  # ${now:} has no value outside a run
    return cfg


def sbatch_lines(tmp_path, step, launcher_params) -> str:
    params = pipeline.step_params(launcher_params, step.configs[0], step.label == chain.SUMMARY)
    return batch_script(tmp_path, *submission.executor_parameters(params))


def launcher_params(cfg) -> dict:
    return {key: None for key in cfg.hydra.launcher if not key.startswith("_")}


def test_the_papers_pipeline_is_arrays_training_jobs_one_job_per_suite_and_a_summary(compose_cfg, root, tmp_path):
    cfg = pipeline_cfg(compose_cfg, tmp_path, "experiment=paper")
    steps, skipped = chain.plan(cfg, live={})
    assert skipped == []
    assert [s.label for s in steps] == ["object_masks", "pixel_grouping", "proposal_learning", "part_ranking",
                                         "distillation", *PAPER_SUITES, "summary"]
    by_label = {s.label: s for s in steps}
    grouping = by_label["pixel_grouping"]
    total = cfg.stage.pixel_grouping.num_partitions
    assert grouping.array and len(grouping.configs) == total and grouping.what[-1] == f"partition {total - 1}"
    assert [c.stage.partition for c in grouping.configs[:3]] == [0, 1, 2] and grouping.configs[0].stage.name == \
        "pixel_grouping"
    assert [s.configs[0].eval.suite for s in steps if s.stage == "evaluate"] == ["pascal_parts", "part_imagenet",
                                                                                "cityscapes_part"]
    params = launcher_params(cfg)
    array_task = sbatch_lines(tmp_path, grouping, params)
    training = sbatch_lines(tmp_path, by_label["distillation"], params)
    summary = sbatch_lines(tmp_path, by_label["summary"], params)
    for flag in ("--nodes=1", "--gpus-per-node=1", "--ntasks-per-node=1", "--job-name=pd_pixel_grouping"):
        assert f"#SBATCH {flag}\n" in array_task, flag
    for flag in ("--nodes=8", "--gpus-per-node=8", "--ntasks-per-node=8", "--job-name=pd_distillation"):
        assert f"#SBATCH {flag}\n" in training, flag
    assert "--gpus-per-node" not in summary and "#SBATCH --cpus-per-task=1\n" in summary
    assert by_label["summary"].after_any and not by_label["distillation"].after_any


def test_the_demo_trains_its_instance_model_first_and_reports_in_the_summary_job(compose_cfg, tmp_path):
    cfg = pipeline_cfg(compose_cfg, tmp_path, "experiment=demo")
    steps, _ = chain.plan(cfg, live={})
    labels = [s.label for s in steps]
    assert labels[0] == "instance_training" and labels[-2:] == ["evaluate-demo", "summary"]
    assert "report" not in labels  # chain.finish runs it after the evaluations


def test_a_resubmission_leaves_out_what_is_done_and_what_is_still_queued(compose_cfg, synth, tmp_path):
    run_dir = tmp_path / "run"
    run(compose_cfg, run_dir, "object_masks")
    run(compose_cfg, run_dir, "pixel_grouping", "stage.partition=1")
    cfg = pipeline_cfg(compose_cfg, tmp_path, "experiment=smoke")
    steps, skipped = chain.plan(cfg, live={"proposal_learning": ["41"]})
    assert [line.split(":")[0] for line in skipped] == ["object_masks"]
    by_label = {s.label: s for s in steps}
    assert list(by_label) == ["pixel_grouping", "proposal_learning", "part_ranking", "distillation",
                              "evaluate-synthetic", "summary"]
    assert by_label["pixel_grouping"].what == ["partition 0"]  # only the incomplete shard
    assert by_label["proposal_learning"].live == ["41"] and not by_label["proposal_learning"].submit
    # object masks made under other values is not done for this pipeline: it is submitted again
    changed = pipeline_cfg(compose_cfg, tmp_path, "experiment=smoke", "stage.object_masks.image_size=192")
    assert chain.plan(changed, live={})[0][0].label == "object_masks"
